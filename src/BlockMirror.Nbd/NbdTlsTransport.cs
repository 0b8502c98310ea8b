namespace BlockMirror.Nbd;

/// <summary>
/// The byte stream under an NBD connection's <see cref="System.Net.Security.SslStream"/>: the
/// socket, read ahead and written in batches. A TLS session moves data in records of at most
/// 16 KiB and SslStream reads and writes its inner stream one record at a time, so a 1 MiB NBD
/// payload would cost 64 receives and 64 sends, each with its ACK and wake-up on the other side
/// (QEMU's and libnbd's GnuTLS sessions pull from and push to the socket the same way, but through
/// their own buffered transport functions). Here one receive takes whatever the kernel holds, up
/// to <see cref="BufferBytes"/>, and the records are handed to the session from memory; and once
/// <see cref="GatherWrites"/> is on, the records of one message are gathered and sent together
/// when the owner flushes (<see cref="Stream.Flush"/>, which SslStream passes down), or when the
/// buffer is full.
/// Gathering starts only after the TLS handshake: the handshake's own messages must go out as
/// SslStream writes them, since it waits for the answer without flushing. Reads and writes may
/// run at once (the session's reader and writer); writes are serialized here, so a record the
/// session writes on its own (a close_notify) never lands in the middle of a gathered batch.
/// </summary>
internal sealed class NbdTlsTransport : Stream
{
    /// <summary>Read-ahead and gather size: 16 full records, a few receives or sends per 1 MiB payload.</summary>
    public const int BufferBytes = 256 * 1024;

    private readonly Stream _inner;
    private readonly SemaphoreSlim _writeTurn = new(1, 1);
    // Plain arrays, not pooled: a read or a send may still be running when the connection is
    // disposed from another thread, and a connection lives long enough for one allocation.
    private readonly byte[] _readBuffer = GC.AllocateUninitializedArray<byte>(BufferBytes);
    private int _readStart;
    private int _readEnd;
    private byte[]? _writeBuffer;
    private int _written;
    private int _disposed;

    /// <param name="inner">The connection's socket stream; disposed with this one.</param>
    public NbdTlsTransport(Stream inner)
    {
        _inner = inner;
    }

    /// <summary>Writes wait in the buffer for a flush (on once the handshake is done); off, every write goes out at once.</summary>
    public bool GatherWrites { get; set; }

    /// <summary>Received bytes not yet read; for tests.</summary>
    internal int ReadAhead => _readEnd - _readStart;

    /// <summary>Bytes written and not yet sent; for tests.</summary>
    internal int Gathered => _written;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    // ---- reading ------------------------------------------------------------------------------

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> destination)
    {
        if (destination.IsEmpty)
            return 0;
        if (_readEnd > _readStart)
            return TakeReadAhead(destination);
        var readBuffer = _readBuffer;
        // A destination as large as the buffer gains nothing from it: received straight into it.
        if (destination.Length >= readBuffer.Length)
            return _inner.Read(destination);
        _readStart = 0;
        _readEnd = _inner.Read(readBuffer, 0, readBuffer.Length);
        return TakeReadAhead(destination);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        if (destination.IsEmpty)
            return ValueTask.FromResult(0);
        if (_readEnd > _readStart)
            return ValueTask.FromResult(TakeReadAhead(destination.Span));
        var readBuffer = _readBuffer;
        if (destination.Length >= readBuffer.Length)
            return _inner.ReadAsync(destination, cancellationToken);
        return FillAndTakeAsync(readBuffer, destination, cancellationToken);
    }

    private async ValueTask<int> FillAndTakeAsync(byte[] readBuffer, Memory<byte> destination, CancellationToken cancellationToken)
    {
        _readStart = 0;
        _readEnd = 0;
        _readEnd = await _inner.ReadAsync(readBuffer, cancellationToken).ConfigureAwait(false);
        return TakeReadAhead(destination.Span);
    }

    private int TakeReadAhead(Span<byte> destination)
    {
        var n = Math.Min(destination.Length, _readEnd - _readStart);
        _readBuffer.AsSpan(_readStart, n).CopyTo(destination);
        _readStart += n;
        return n;
    }

    // ---- writing ------------------------------------------------------------------------------

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> data)
    {
        _writeTurn.Wait();
        try
        {
            if (TryGather(data))
                return;
            SendGathered();
            // A write as large as the buffer goes out as it is: copying it first gains nothing.
            if (data.Length < BufferBytes && TryGather(data))
                return;
            _inner.Write(data);
        }
        finally
        {
            _writeTurn.Release();
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        await _writeTurn.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (TryGather(data.Span))
                return;
            await SendGatheredAsync(cancellationToken).ConfigureAwait(false);
            if (data.Length < BufferBytes && TryGather(data.Span))
                return;
            await _inner.WriteAsync(data, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeTurn.Release();
        }
    }

    /// <summary>Sends what was gathered.</summary>
    public override void Flush()
    {
        _writeTurn.Wait();
        try
        {
            SendGathered();
        }
        finally
        {
            _writeTurn.Release();
        }
    }

    public override async Task FlushAsync(CancellationToken cancellationToken)
    {
        await _writeTurn.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await SendGatheredAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeTurn.Release();
        }
    }

    /// <summary>Copies <paramref name="data"/> behind what is gathered when gathering and it fits; false otherwise (nothing copied).</summary>
    private bool TryGather(ReadOnlySpan<byte> data)
    {
        if (!GatherWrites)
            return false;
        var buffer = _writeBuffer ??= GC.AllocateUninitializedArray<byte>(BufferBytes);
        if (data.Length > buffer.Length - _written)
            return false;
        data.CopyTo(buffer.AsSpan(_written));
        _written += data.Length;
        return true;
    }

    private void SendGathered()
    {
        if (_written == 0)
            return;
        // Emptied before the send: after a failed send the stream is broken, and what was gathered must not go out later.
        var n = _written;
        _written = 0;
        _inner.Write(_writeBuffer!, 0, n);
    }

    private ValueTask SendGatheredAsync(CancellationToken cancellationToken)
    {
        if (_written == 0)
            return ValueTask.CompletedTask;
        var n = _written;
        _written = 0;
        return _inner.WriteAsync(_writeBuffer.AsMemory(0, n), cancellationToken);
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>
    /// Sends what is still gathered (the session's close_notify) if the connection takes it and no
    /// write is running, then closes the inner stream.
    /// </summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            if (_writeTurn.Wait(0))
            {
                try
                {
                    SendGathered();
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
                {
                    // The peer is gone; nothing more to tell it.
                }
                finally
                {
                    _writeTurn.Release();
                }
            }
            _inner.Dispose();
        }
        base.Dispose(disposing);
    }
}
