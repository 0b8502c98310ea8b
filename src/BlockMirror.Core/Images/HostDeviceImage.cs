using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// A raw image on a host block device (an LVM volume, a zvol, a loop or nbd device), like QEMU's
/// <c>host_device</c> driver in file-posix: positional buffered I/O, the size from BLKGETSIZE64, and
/// zeroes and discards passed to the device (fallocate on the device, BLKZEROOUT, BLKDISCARD).
/// Every byte of a device is data to a reader: block status says so, as QEMU's host_device does.
/// </summary>
/// <remarks>
/// Two locks keep a second writer out, because each sees openers the other cannot: QEMU's OFD lock
/// bytes (<see cref="ImageLock"/>) on the device node, which qemu-img, qemu-io, qemu-nbd and a VM
/// on the same node honour and which refuse them to us in turn; and, for a read-write node, an
/// exclusive open (O_EXCL on a block device is the kernel's claim): a mounted file system, an LVM,
/// md or dm holder, or any other exclusive opener refuses it with EBUSY, whatever node name the
/// other side used, where an OFD lock only sees openers of the same inode. Neither stops a plain
/// open(2) (dd, cat), as neither does for QEMU. A read-only node takes no claim: reading a device
/// something else holds is the operator's call, as with QEMU's read-only opens.
/// </remarks>
public sealed class HostDeviceImage : IBlockImage
{
    private readonly SafeFileHandle _handle;
    private readonly Action _fdatasync;
    private readonly long _logicalBlock;
    private readonly ClosingStat _closing;

    // Set when opened with O_DIRECT (cache.direct): reads and writes then go through it, aligned.
    private readonly DirectIo? _direct;

    // Set once the device said a way of zeroing or discarding is not supported, so we stop asking.
    private volatile bool _noPunchHole;
    private volatile bool _noZeroOut;
    private volatile bool _noDiscard;

    private HostDeviceImage(SafeFileHandle handle, string location, long size, long logicalBlock, bool readOnly, DirectIoAlignment? direct)
    {
        _handle = handle;
        if (direct is { } alignment)
            _direct = new DirectIo(handle, location, alignment, fileSize: null);
        _closing = new ClosingStat(handle);
        Location = location;
        Size = size;
        _logicalBlock = logicalBlock;
        ReadOnly = readOnly;
        _fdatasync = SyncData;
    }

    /// <inheritdoc />
    public long Size { get; }

    /// <inheritdoc />
    public bool ReadOnly { get; }

    /// <inheritdoc />
    public string Location { get; }

    /// <summary>A device holds whatever was on it before: it never reads as zeroes by itself (QEMU's host_device neither).</summary>
    public bool HasZeroInit => false;

    /// <inheritdoc />
    public bool CacheDirect => _direct is not null;

    /// <summary>The whole device: every byte of it is the image's (a device has no st_blocks of its own).</summary>
    public long AllocatedBytes => Size;

    /// <summary>The device's logical block size (BLKSSZGET): the unit its zeroing and discard ioctls take.</summary>
    public long LogicalBlockSize => _logicalBlock;

    /// <summary>
    /// Forgets the device's ways of zeroing, as on a device without them: without unmap as well,
    /// BLKZEROOUT too, so write-zeroes writes zero buffers. Lets tests reach each fallback on a loop device.
    /// </summary>
    internal void DisableZeroing(bool punchHole, bool zeroOut)
    {
        _noPunchHole |= punchHole;
        _noZeroOut |= zeroOut;
    }

    /// <summary>
    /// Opens the block device at <paramref name="path"/> (already resolved and allowed by
    /// <see cref="DeviceAllowList"/>) and locks it. Throws <see cref="BlockException"/>:
    /// <c>image-not-found</c>, <c>not-a-block-device</c> for anything else at the path (checked by stat
    /// before the open, so a character device's open never runs its side effects, and by fstat after),
    /// <c>image-locked</c> when another opener holds it (OFD lock bytes, or EBUSY from the exclusive open),
    /// <c>image-not-accessible</c> when not permitted or the device is read-only (BLKROGET) for a
    /// read-write node; <see cref="IOException"/> with the errno as HResult otherwise.
    /// </summary>
    /// <param name="displayPath">How messages name the device (the path the client gave).</param>
    /// <param name="direct">Open with O_DIRECT (cache.direct): I/O aligned to the device's logical block, bypassing its page cache.</param>
    public static HostDeviceImage Open(string path, bool readOnly, string displayPath, bool direct = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (State.StateNative.stat(path, out var before) != 0)
            throw OpenFailed(LibC.LastErrno, displayPath);
        CheckBlockDevice(before, displayPath);
        var handle = OpenDevice(path, readOnly, displayPath, direct);
        try
        {
            using (var lease = new FileDescriptorLease(handle))
            {
                if (LibC.fstat(lease.Fd, out var st) != 0)
                    throw LibC.ErrnoException(LibC.LastErrno, displayPath, "fstat");
                CheckBlockDevice(st, displayPath);
                if (!readOnly)
                    CheckWritable(lease.Fd, displayPath);
            }
            ImageLock.Acquire(handle, readOnly, displayPath);
            var logicalBlock = LogicalBlock(handle);
            var alignment = direct
                ? DirectIoAlignment.Probe(handle, logicalBlock) ?? throw RawFileImage.DirectIoUnsupported(displayPath)
                : (DirectIoAlignment?)null;
            return new HostDeviceImage(handle, displayPath, DeviceSize(handle, displayPath), logicalBlock, readOnly, alignment);
        }
        catch
        {
            handle.Dispose(); // also drops the claim and whatever lock bytes we took
            throw;
        }
    }

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        return _direct is null
            ? PaddedRead.ReadAsync(_handle, offset, buffer, cancellationToken)
            : _direct.ReadAsync(offset, buffer, cancellationToken);
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ThrowIfReadOnly();
        // Buffered writes to a block device go through its page cache without an inode lock, so
        // unlike a file's they need no serializing here.
        return fua
            ? WriteFuaAsync(offset, data, cancellationToken)
            : WriteOnceAsync(offset, data, cancellationToken);
    }

    private ValueTask WriteOnceAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        _direct is null
            ? RandomAccess.WriteAsync(_handle, data, offset, cancellationToken)
            : _direct.WriteAsync(offset, data, cancellationToken);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteFuaAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await WriteOnceAsync(offset, data, cancellationToken).ConfigureAwait(false);
        // Buffered I/O has no FUA; like QEMU, a flush after the write.
        await Task.Run(_fdatasync, CancellationToken.None).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// QEMU's order for a block device (handle_aiocb_write_zeroes_unmap, then _block): with unmap
    /// allowed, fallocate(PUNCH_HOLE | KEEP_SIZE) on the device, which the kernel does only where the
    /// device zeroes by deallocating, and refuses otherwise; then BLKZEROOUT, which the kernel carries
    /// out with the device's write-zeroes command or by writing zero pages itself; and zero buffers
    /// only when neither exists. The ioctls take whole logical blocks: a partial block at either end
    /// is written as zero bytes.
    /// </remarks>
    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ThrowIfReadOnly();
        cancellationToken.ThrowIfCancellationRequested();
        if (length == 0)
            return;
        // Direct: a read-modify-write of a block this touches must not run across it.
        using (await OtherWriteScope.BeginAsync(_direct, offset, length).ConfigureAwait(false))
            await WriteZeroesTrackedAsync(offset, length, mayUnmap, cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask WriteZeroesTrackedAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken)
    {
        var (start, end) = AlignedInside(offset, length);
        if (start >= end)
        {
            await WriteZeroBuffersAsync(offset, length, cancellationToken).ConfigureAwait(false);
            return;
        }
        await WriteZeroBuffersAsync(offset, start - offset, cancellationToken).ConfigureAwait(false);
        // The ioctls can take a while on a large range (the kernel may write every block); run them
        // on the thread pool as QEMU runs them in its worker threads.
        if (!await Task.Run(() => TryZeroBlocks(start, end - start, mayUnmap), CancellationToken.None).ConfigureAwait(false))
            await WriteZeroBuffersAsync(start, end - start, cancellationToken).ConfigureAwait(false);
        await WriteZeroBuffersAsync(end, offset + length - end, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// BLKDISCARD of the whole logical blocks in the range (QEMU's handle_aiocb_discard for a block
    /// device). Advisory: partial blocks at the ends are left as they are, and a device without
    /// discard drops it. Whether a discarded range reads as zeroes is the device's business (a loop
    /// device punches its file, so it does); a caller that needs zeroes writes zeroes.
    /// </remarks>
    public async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ThrowIfReadOnly();
        cancellationToken.ThrowIfCancellationRequested();
        var (start, end) = AlignedInside(offset, length);
        if (start >= end || _noDiscard)
            return;
        using (await OtherWriteScope.BeginAsync(_direct, start, end - start).ConfigureAwait(false))
        {
            if (!await Task.Run(() => TryBlockIoctl(LibC.BLKDISCARD, start, end - start), CancellationToken.None).ConfigureAwait(false))
                _noDiscard = true;
        }
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        // fdatasync of a block device writes its page cache back and flushes the device's cache.
        return new ValueTask(Task.Run(_fdatasync, CancellationToken.None));
    }

    /// <inheritdoc />
    /// <remarks>All data, as QEMU's host_device answers: a device has no holes a reader could skip.</remarks>
    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        cancellationToken.ThrowIfCancellationRequested();
        var length = Math.Max(0, Math.Min(maxLength, Size - offset));
        return new ValueTask<ImageExtent>(new ImageExtent(offset, length, length == 0 ? ExtentKind.Zero : ExtentKind.Data));
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        _closing.Close(); // closing drops the exclusive claim and the OFD locks
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// fstat of the open device node, or (once disposed) as it was when it was closed; null when that
    /// failed. A write through the node updates the node's mtime, so checkpoint stamps work as for files.
    /// </summary>
    internal StatBuffer? TryStat() => _closing.TryStat();

    /// <summary>The whole logical blocks inside [offset, offset + length): start rounded up, end down.</summary>
    private (long Start, long End) AlignedInside(long offset, long length)
    {
        var start = (offset + _logicalBlock - 1) / _logicalBlock * _logicalBlock;
        var end = (offset + length) / _logicalBlock * _logicalBlock;
        return (start, end);
    }

    /// <summary>Zeroes whole blocks by the device's own means; false when it has none (write buffers then).</summary>
    private bool TryZeroBlocks(long offset, long length, bool mayUnmap)
    {
        if (mayUnmap && !_noPunchHole && TryPunchHole(offset, length))
            return true;
        if (_noZeroOut)
            return false;
        if (TryBlockIoctl(LibC.BLKZEROOUT, offset, length))
            return true;
        _noZeroOut = true;
        return false;
    }

    /// <summary>
    /// fallocate(PUNCH_HOLE | KEEP_SIZE) on the device: zeroes by deallocating, or EOPNOTSUPP where the
    /// device cannot (the kernel never falls back to writing here). EINVAL and EBUSY mean "not this
    /// way, this time" to QEMU as well: the next way is tried.
    /// </summary>
    private bool TryPunchHole(long offset, long length)
    {
        using var lease = new FileDescriptorLease(_handle);
        while (LibC.fallocate(lease.Fd, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length) != 0)
        {
            var errno = LibC.LastErrno;
            if (errno == LibC.EINTR)
                continue;
            if (IsUnsupported(errno))
            {
                _noPunchHole = true;
                return false;
            }
            if (errno is LibC.EINVAL or LibC.EBUSY)
                return false;
            throw LibC.ErrnoException(errno, Location, "fallocate");
        }
        return true;
    }

    /// <summary>BLKZEROOUT or BLKDISCARD of a block-aligned range; false when the device has no such operation (the caller remembers it).</summary>
    private bool TryBlockIoctl(uint request, long offset, long length)
    {
        using var lease = new FileDescriptorLease(_handle);
        var range = new ByteRange(offset, length);
        while (LibC.ioctl(lease.Fd, request, in range) != 0)
        {
            var errno = LibC.LastErrno;
            if (errno == LibC.EINTR)
                continue;
            if (IsUnsupported(errno))
                return false;
            throw LibC.ErrnoException(errno, Location, request == LibC.BLKDISCARD ? "BLKDISCARD" : "BLKZEROOUT");
        }
        return true;
    }

    /// <summary>The set QEMU's translate_err folds into ENOTSUP.</summary>
    private static bool IsUnsupported(int errno) => errno is LibC.EOPNOTSUPP or LibC.ENOSYS or LibC.ENODEV or LibC.ENOTTY;

    private async ValueTask WriteZeroBuffersAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (_direct is not null)
        {
            // Registered already by the caller: the zeroes go through the aligned path untracked.
            await _direct.WriteZeroesAsync(offset, length, cancellationToken).ConfigureAwait(false);
            return;
        }
        var zeroes = ZeroBuffer.Memory;
        while (length > 0)
        {
            var chunk = (int)Math.Min(length, zeroes.Length);
            await RandomAccess.WriteAsync(_handle, zeroes[..chunk], offset, cancellationToken).ConfigureAwait(false);
            offset += chunk;
            length -= chunk;
        }
    }

    private void SyncData() => LibC.FDataSync(_handle, Location);

    private void ThrowIfReadOnly()
    {
        // The node refuses writes to a read-only node first; reaching here is a caller bug.
        if (ReadOnly)
            throw new InvalidOperationException($"Image '{Location}' is open read-only");
    }

    /// <summary>
    /// open(2) of the device: O_EXCL for a read-write node (the kernel's exclusive claim, see the
    /// class remarks), O_NONBLOCK cleared again once open (it means nothing for a block device, but
    /// an open that found something else must not have waited for it).
    /// </summary>
    private static SafeFileHandle OpenDevice(string path, bool readOnly, string displayPath, bool direct)
    {
        var flags = (readOnly ? LibC.O_RDONLY : LibC.O_RDWR | LibC.O_EXCL) | LibC.O_NONBLOCK | LibC.O_CLOEXEC | LibC.O_NOCTTY;
        int fd;
        do
        {
            fd = LibC.open(path, flags, 0);
        }
        while (fd < 0 && LibC.LastErrno == LibC.EINTR);
        if (fd < 0)
            throw OpenFailed(LibC.LastErrno, displayPath);
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        var status = LibC.fcntl(fd, LibC.F_GETFL, 0);
        if (status < 0 || LibC.fcntl(fd, LibC.F_SETFL, (status & ~LibC.O_NONBLOCK) | (direct ? LibC.O_DIRECT : 0)) != 0)
        {
            var errno = LibC.LastErrno;
            handle.Dispose();
            if (direct && errno == LibC.EINVAL)
                throw RawFileImage.DirectIoUnsupported(displayPath);
            throw LibC.ErrnoException(errno, displayPath, "fcntl");
        }
        return handle;
    }

    private static void CheckBlockDevice(in StatBuffer st, string displayPath)
    {
        if (st.FileType != StatBuffer.BlockDevice)
            throw BlockErrors.Invalid("not-a-block-device", $"Could not open '{displayPath}': it is {Describe(st.FileType)}, not a block device");
    }

    /// <summary>
    /// A device set read-only (blockdev --setro) opens O_RDWR and then fails every write with EPERM;
    /// QEMU's check_hdev_writable refuses the open instead, and so do we.
    /// </summary>
    private static void CheckWritable(int fd, string displayPath)
    {
        if (LibC.ioctl(fd, LibC.BLKROGET, out int readOnly) == 0 && readOnly != 0)
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{displayPath}' for writing: the block device is read-only (open the node with readOnly)");
    }

    private static long DeviceSize(SafeFileHandle handle, string displayPath)
    {
        using var lease = new FileDescriptorLease(handle);
        if (LibC.ioctl(lease.Fd, LibC.BLKGETSIZE64, out ulong size) != 0)
            throw LibC.ErrnoException(LibC.LastErrno, displayPath, "BLKGETSIZE64");
        return checked((long)size);
    }

    /// <summary>BLKSSZGET, or 512 (the unit the ioctls never go below) when the device does not say.</summary>
    private static long LogicalBlock(SafeFileHandle handle)
    {
        using var lease = new FileDescriptorLease(handle);
        return LibC.ioctl(lease.Fd, LibC.BLKSSZGET, out int size) == 0 && size >= 512 && (size & (size - 1)) == 0 ? size : 512;
    }

    private static string Describe(uint fileType) => fileType switch
    {
        StatBuffer.RegularFile => "a regular file",
        StatBuffer.Directory => "a directory",
        StatBuffer.Fifo => "a FIFO",
        StatBuffer.Socket => "a socket",
        StatBuffer.CharacterDevice => "a character device",
        _ => "a special file",
    };

    /// <summary>What a failed stat or open of a device means to the client, by errno.</summary>
    private static Exception OpenFailed(int errno, string displayPath) => errno switch
    {
        LibC.ENOENT or LibC.ENOTDIR or LibC.ENXIO or LibC.ENODEV =>
            BlockErrors.NotFound("image-not-found", $"Could not open '{displayPath}': No such device"),
        LibC.EBUSY => BlockErrors.Conflict("image-locked",
            $"Could not open '{displayPath}' exclusively: the device is in use (mounted, or held by another exclusive opener)"),
        LibC.EACCES or LibC.EPERM or LibC.EROFS => BlockErrors.Conflict("image-not-accessible",
            $"Could not open '{displayPath}': {LibC.ErrnoException(errno, displayPath).Message}"),
        _ => LibC.ErrnoException(errno, displayPath, "open"),
    };
}
