using System.Net.Security;
using System.Net.Sockets;

namespace BlockMirror.Nbd;

/// <summary>
/// A server connection's byte stream, QEMU's <c>client-&gt;ioc</c>: the socket itself until
/// NBD_OPT_STARTTLS, then the TLS session over it (QEMU swaps its QIOChannel the same way). Both
/// ways are blocking calls on the connection's own threads. The plain path is the socket's own
/// receive and sendmsg, one branch away, so connections without TLS run exactly as before; with
/// TLS every byte goes through the <see cref="SslStream"/>, payloads included (TLS records cannot
/// be received straight into a payload buffer: they are decrypted from the socket's bytes), over
/// an <see cref="NbdTlsTransport"/> that receives ahead and sends the records of a batch together.
/// </summary>
internal sealed class NbdChannel : IDisposable
{
    /// <summary>
    /// Replies gathered into one TLS write up to this size: every <see cref="SslStream"/> write is at
    /// least one record and one send, so a burst of 16-byte replies is copied together first. Larger
    /// segments (read data) are written as they are.
    /// </summary>
    private const int TlsGatherBytes = 64 * 1024;

    private readonly Socket _socket;
    private SslStream? _tls;
    private byte[]? _gather;

    public NbdChannel(Socket socket)
    {
        _socket = socket;
    }

    /// <summary>The TLS session once STARTTLS succeeded; null on a plain connection.</summary>
    public SslStream? Tls => _tls;

    /// <summary>Switches to <paramref name="tls"/> (authenticated already) for every later byte.</summary>
    public void StartTls(SslStream tls) => _tls = tls;

    /// <summary>One receive into <paramref name="destination"/>; 0 at the end of the stream.</summary>
    public int Receive(Span<byte> destination) =>
        _tls is { } tls ? tls.Read(destination) : _socket.Receive(destination, SocketFlags.None);

    /// <summary>Sends all of <paramref name="message"/>.</summary>
    public void Send(ReadOnlySpan<byte> message)
    {
        if (_tls is { } tls)
        {
            tls.Write(message);
            tls.Flush(); // the transport under the session gathers records until this
            return;
        }
        // A blocking socket sends everything or fails; a short count would leave the stream unframed.
        if (_socket.Send(message, SocketFlags.None) != message.Length)
            throw new IOException($"sent less than the {message.Length} bytes of a message");
    }

    /// <summary>Sends the segments in order, as one sendmsg on a plain connection.</summary>
    public void Send(IList<ArraySegment<byte>> segments, long length)
    {
        if (_tls is { } tls)
        {
            SendTls(tls, segments);
            return;
        }
        var sent = segments.Count == 1 ? _socket.Send(segments[0].AsSpan(), SocketFlags.None) : _socket.Send(segments, SocketFlags.None);
        if (sent != length)
            throw new IOException($"sent {sent} of {length} bytes of replies");
    }

    private void SendTls(SslStream tls, IList<ArraySegment<byte>> segments)
    {
        _gather ??= GC.AllocateUninitializedArray<byte>(TlsGatherBytes);
        var filled = 0;
        foreach (var segment in segments)
        {
            if (segment.Count > _gather.Length - filled)
            {
                if (filled > 0)
                    tls.Write(_gather, 0, filled);
                filled = 0;
            }
            if (segment.Count >= _gather.Length)
            {
                tls.Write(segment.AsSpan());
                continue;
            }
            segment.AsSpan().CopyTo(_gather.AsSpan(filled));
            filled += segment.Count;
        }
        if (filled > 0)
            tls.Write(_gather, 0, filled);
        tls.Flush(); // the records of the whole batch leave in as few sends as the transport's buffer allows
    }

    /// <summary>Ends the TLS session (the socket is the connection's to close).</summary>
    public void Dispose() => _tls?.Dispose();
}
