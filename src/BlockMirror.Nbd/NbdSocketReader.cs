using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// A server connection's input: blocking receives on the connection's own thread, through one
/// buffer, from its <see cref="NbdChannel"/> (the socket, or the TLS session after STARTTLS). Requests of a burst arrive in one recv and are taken from the buffer; a large payload
/// is received straight into the caller's buffer (the one the image write uses). A blocking recv
/// is woken by the kernel itself, where an asynchronous one costs the epoll thread and a
/// thread-pool hop per wait. Before every wait the replies the batch produced are sent
/// (<see cref="NbdReplyWriter.EndBatch"/>), so replies to a burst go out in one send.
/// </summary>
internal sealed class NbdSocketReader
{
    /// <summary>Large enough for a burst of small requests (32 × 4 KiB writes with headers is 132 KiB: two receives).</summary>
    private const int BufferSize = NbdConstants.StreamBufferBytes;

    /// <summary>What is still missing of a payload from this size on is received straight into it.</summary>
    private const int DirectReceiveFrom = BufferSize / 2;

    private readonly NbdChannel _channel;
    private readonly NbdReplyWriter _replies;
    private readonly byte[] _buffer = GC.AllocateUninitializedArray<byte>(BufferSize);
    private byte[]? _scratch;
    private int _start;
    private int _end;

    public NbdSocketReader(NbdChannel channel, NbdReplyWriter replies)
    {
        _channel = channel;
        _replies = replies;
    }

    /// <summary>
    /// Bytes received but not yet taken. Must be none when TLS starts: what the client sent before
    /// the server's reply to NBD_OPT_STARTTLS was not protected, and must not be read as if it were.
    /// </summary>
    public bool HasBuffered => _end > _start;

    /// <summary>Reads exactly <paramref name="destination"/>; false on a clean end of stream before its first byte.</summary>
    public bool TryReadExact(Span<byte> destination)
    {
        var done = Take(destination);
        while (done < destination.Length)
        {
            var missing = destination.Length - done;
            var got = missing >= DirectReceiveFrom ? Receive(destination[done..]) : Fill() > 0 ? Take(destination[done..]) : 0;
            if (got == 0)
            {
                if (done == 0)
                    return false;
                throw new EndOfStreamException("The client closed the connection in the middle of a message");
            }
            done += got;
        }
        return true;
    }

    public void ReadExact(Span<byte> destination)
    {
        if (!TryReadExact(destination) && destination.Length > 0)
            throw new EndOfStreamException("The client closed the connection in the middle of a message");
    }

    /// <summary>Reads and drops <paramref name="count"/> bytes (the payload of a refused write).</summary>
    public void Discard(long count)
    {
        _scratch ??= new byte[BufferSize];
        while (count > 0)
        {
            var chunk = (int)Math.Min(count, _scratch.Length);
            ReadExact(_scratch.AsSpan(0, chunk));
            count -= chunk;
        }
    }

    private int Take(Span<byte> destination)
    {
        var n = Math.Min(destination.Length, _end - _start);
        _buffer.AsSpan(_start, n).CopyTo(destination);
        _start += n;
        return n;
    }

    /// <summary>Refills the (empty) buffer with whatever one receive brings; 0 at the end of the stream.</summary>
    private int Fill()
    {
        _start = 0;
        _end = Receive(_buffer);
        return _end;
    }

    private int Receive(Span<byte> destination)
    {
        // Nothing more to work on until the client sends: what this batch answered goes out now.
        _replies.EndBatch();
        try
        {
            return _channel.Receive(destination);
        }
        finally
        {
            _replies.BeginBatch();
        }
    }
}
