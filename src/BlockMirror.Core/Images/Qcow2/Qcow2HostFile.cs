namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// A qcow2 image's file as a <see cref="RawFileImage"/>: the same open (regular files only, O_NONBLOCK
/// for FIFOs, hard-link policy), QEMU's OFD lock bytes, positional I/O with its one-pwrite-at-a-time
/// turn for data, fdatasync and hole punching — so a qcow2 image is locked against qemu-img and a
/// second opener exactly as a raw one is.
/// </summary>
internal sealed class Qcow2HostFile : IQcow2File
{
    private readonly RawFileImage _raw;

    internal Qcow2HostFile(RawFileImage raw)
    {
        _raw = raw;
    }

    internal RawFileImage Raw => _raw;

    public string Path => _raw.Location;

    public long Length => RandomAccess.GetLength(_raw.Handle);

    public long AllocatedBytes => _raw.AllocatedBytes;

    public void Read(long offset, Span<byte> buffer)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var n = RandomAccess.Read(_raw.Handle, buffer[done..], offset + done);
            if (n == 0)
            {
                buffer[done..].Clear();
                return;
            }
            done += n;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data) => RandomAccess.Write(_raw.Handle, data, offset);

    public void Flush()
    {
        using var lease = new FileDescriptorLease(_raw.Handle);
        while (LibC.fdatasync(lease.Fd) != 0)
        {
            var errno = LibC.LastErrno;
            if (errno != LibC.EINTR)
                throw LibC.ErrnoException(errno, Path, "fdatasync");
        }
    }

    public void SetLength(long length) => RandomAccess.SetLength(_raw.Handle, length);

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _raw.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        _raw.WriteAsync(offset, data, fua: false, cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => _raw.FlushAsync(cancellationToken);

    public ValueTask PunchHoleAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        _raw.DiscardAsync(offset, length, cancellationToken);

    public ValueTask DisposeAsync() => _raw.DisposeAsync();
}
