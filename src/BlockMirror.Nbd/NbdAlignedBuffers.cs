using System.Buffers;
using System.Collections.Concurrent;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// The payload and reply buffers of an export whose image is opened with O_DIRECT (QEMU's
/// qemu_blockalign for its NBD server): byte arrays on the pinned object heap whose data area starts
/// on a page, so a WRITE's payload is received where the image can pwrite it from, and a READ is
/// pread straight behind its reply header, with no bounce copy in the image. Arrays, not native
/// memory, because the socket's gathering send takes array segments; pinned, so the offset that is
/// aligned stays aligned. Power-of-two data sizes from 4 KiB to the largest payload, kept for reuse
/// like <c>ArrayPool</c>'s (at most 16 MiB, and at least four buffers, per size).
/// </summary>
internal static class NbdAlignedBuffers
{
    /// <summary>The data area starts on a page: above any logical block size or memory alignment a device asks for.</summary>
    public const int Alignment = 4096;

    /// <summary>Room kept in front of the data area for a reply's header (a simple reply or a data chunk's).</summary>
    public const int HeaderRoom = 32;

    private const int MinShift = 12; // 4 KiB
    private const int MaxShift = 25; // 32 MiB, the largest payload
    private const int BytesKeptPerSize = 16 << 20;

    private static readonly ConcurrentBag<byte[]>[] s_sizes = CreateSizes();
    private static readonly int[] s_kept = new int[MaxShift - MinShift + 1];

    /// <summary>A buffer whose data area (from <see cref="DataOffset"/>) holds at least <paramref name="length"/> bytes.</summary>
    public static byte[] Rent(int length)
    {
        var index = IndexOf(length);
        if (s_sizes[index].TryTake(out var buffer))
        {
            Interlocked.Decrement(ref s_kept[index]);
            return buffer;
        }
        // One page of slack puts a page boundary at or after HeaderRoom wherever the array lands.
        return GC.AllocateUninitializedArray<byte>((1 << (index + MinShift)) + Alignment + HeaderRoom, pinned: true);
    }

    /// <summary>Gives <paramref name="buffer"/> (from <see cref="Rent"/>) back; the caller no longer touches it.</summary>
    public static void Return(byte[] buffer)
    {
        var capacity = Capacity(buffer);
        var index = IndexOf(capacity);
        var limit = Math.Max(4, BytesKeptPerSize / capacity);
        if (Interlocked.Increment(ref s_kept[index]) <= limit)
        {
            s_sizes[index].Add(buffer);
            return;
        }
        Interlocked.Decrement(ref s_kept[index]); // dropped: the GC frees it
    }

    /// <summary>
    /// A buffer for <paramref name="head"/> bytes followed by <paramref name="length"/> bytes of data:
    /// from this pool with the data on a page when <paramref name="aligned"/> (a direct export), else
    /// from <c>ArrayPool</c>. <paramref name="start"/> is where the head begins; the data follows it.
    /// </summary>
    public static byte[] Rent(int head, int length, bool aligned, out int start)
    {
        if (!aligned)
        {
            start = 0;
            return ArrayPool<byte>.Shared.Rent(head + length);
        }
        var buffer = Rent(length);
        start = DataOffset(buffer) - head;
        return buffer;
    }

    /// <summary>Gives a buffer back to the pool it came from (see <see cref="Rent(int, int, bool, out int)"/>).</summary>
    public static void Return(byte[] buffer, bool aligned)
    {
        if (aligned)
            Return(buffer);
        else
            ArrayPool<byte>.Shared.Return(buffer);
    }

    /// <summary>Where the page-aligned data area of <paramref name="buffer"/> starts: at least <see cref="HeaderRoom"/>.</summary>
    public static unsafe int DataOffset(byte[] buffer)
    {
        // Pinned: the address does not change between this call and the I/O.
        var address = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer)) + HeaderRoom;
        return HeaderRoom + (int)((Alignment - (address & (Alignment - 1))) & (Alignment - 1));
    }

    /// <summary>The data area's size: a power of two.</summary>
    public static int Capacity(byte[] buffer) => buffer.Length - Alignment - HeaderRoom;

    private static int IndexOf(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, 1 << MaxShift);
        var shift = Math.Max(MinShift, 32 - BitOperations.LeadingZeroCount((uint)length - 1));
        return shift - MinShift;
    }

    private static ConcurrentBag<byte[]>[] CreateSizes()
    {
        var sizes = new ConcurrentBag<byte[]>[MaxShift - MinShift + 1];
        for (var i = 0; i < sizes.Length; i++)
            sizes[i] = [];
        return sizes;
    }
}
