using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// What O_DIRECT I/O on one open file must be aligned to (QEMU's raw_probe_alignment): the offset
/// and length of every request (<see cref="Request"/>) and the address of its buffer
/// (<see cref="Memory"/>). Asked of the kernel first (statx STATX_DIOALIGN, Linux ≥ 6.1, which
/// says 0 where the file cannot do direct I/O at all), of a block device by BLKSSZGET, and
/// otherwise found as QEMU does: the smallest of 512…4096 that a read of that length at offset 0
/// does not refuse with EINVAL.
/// </summary>
internal readonly record struct DirectIoAlignment(int Request, int Memory)
{
    private const int MaxBlock = 4096; // QEMU's MAX_BLOCKSIZE

    /// <summary>The alignment of <paramref name="handle"/>'s direct I/O; null when the kernel says the file has none.</summary>
    public static unsafe DirectIoAlignment? Probe(SafeFileHandle handle, long? deviceLogicalBlock)
    {
        using var lease = new FileDescriptorLease(handle);
        var statx = stackalloc byte[256];
        if (LibC.statx(lease.Fd, "", LibC.AT_EMPTY_PATH, LibC.STATX_DIOALIGN, statx) == 0
            && (*(uint*)statx & LibC.STATX_DIOALIGN) != 0)
        {
            // struct statx: stx_dio_mem_align at byte 152, stx_dio_offset_align at 156.
            var memory = *(uint*)(statx + 152);
            var request = *(uint*)(statx + 156);
            if (request == 0)
                return null;
            if (!System.Numerics.BitOperations.IsPow2(request))
                request = MaxBlock;
            return new DirectIoAlignment(checked((int)request), Math.Max(1, checked((int)memory)));
        }
        if (deviceLogicalBlock is { } block)
            return new DirectIoAlignment(checked((int)block), MaxBlock);
        return new DirectIoAlignment(ProbeByRead(lease.Fd), MaxBlock);
    }

    /// <summary>
    /// raw_is_io_aligned for 512, 1024, 2048: the first length a read accepts (any answer but
    /// EINVAL; a read at the end of the file accepts anything, as in QEMU), else 4096.
    /// </summary>
    private static unsafe int ProbeByRead(int fd)
    {
        var buffer = AlignedBufferPool.Rent(MaxBlock);
        try
        {
            using var pin = buffer.Memory.Pin();
            for (var align = 512; align < MaxBlock; align <<= 1)
            {
                var vector = new IoVector { Base = (byte*)pin.Pointer, Length = (nuint)align };
                if (LibC.preadv2(fd, &vector, 1, 0, 0) >= 0 || LibC.LastErrno != LibC.EINVAL)
                    return align;
            }
            return MaxBlock;
        }
        finally
        {
            AlignedBufferPool.Return(buffer);
        }
    }
}
