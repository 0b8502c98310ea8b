using System.Net.Sockets;

namespace BlockMirror.Nbd;

/// <summary>
/// A server connection's output: replies are queued whole and sent together, several in one
/// sendmsg (the write buffers of Garnet and Npgsql are the model). Whoever queues a reply while no
/// send is running sends, on its own thread, everything queued by then and whatever was queued
/// meanwhile (so under load one thread sends while the others only queue, and their replies share
/// the next send); while the connection's reader holds a batch open, replies only queue and the
/// reader sends them all when it is about to wait. Replies are never split, so chunks of different
/// requests never interleave inside a message. A failed send calls <c>onFailure</c> once and
/// everything queued later is dropped: the stream is no longer framed.
/// </summary>
internal sealed class NbdReplyWriter
{
    private readonly Socket _socket;
    private readonly Action<Exception> _onFailure;
    private readonly Lock _lock = new();
    private NbdReplyBatch _filling = new();
    private NbdReplyBatch _sending = new();
    private bool _readerHolds;
    private bool _flushing;
    private bool _failed;

    public NbdReplyWriter(Socket socket, Action<Exception> onFailure)
    {
        _socket = socket;
        _onFailure = onFailure;
    }

    /// <summary>Sends made (each with one or more replies); for tests of the coalescing.</summary>
    public long Sends { get; private set; }

    /// <summary>Replies queued; with <see cref="Sends"/>, how many shared a send.</summary>
    public long Replies { get; private set; }

    /// <summary>Queues a copy of a small reply.</summary>
    public void Enqueue(ReadOnlySpan<byte> reply)
    {
        lock (_lock)
        {
            if (_failed)
                return;
            _filling.AddCopy(reply);
            Replies++;
            if (!TakeTurnToSend())
                return;
        }
        SendQueued();
    }

    /// <summary>Queues the first <paramref name="length"/> bytes of a pooled buffer; the writer returns it to the pool.</summary>
    public void EnqueuePooled(byte[] buffer, int length)
    {
        lock (_lock)
        {
            if (_failed)
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
                return;
            }
            _filling.AddPooled(buffer, length);
            Replies++;
            if (!TakeTurnToSend())
                return;
        }
        SendQueued();
    }

    /// <summary>The reader starts a batch: replies queued until <see cref="EndBatch"/> wait for it.</summary>
    public void BeginBatch()
    {
        lock (_lock)
            _readerHolds = true;
    }

    /// <summary>The reader is about to wait: everything queued goes out now (on this thread unless a send is running).</summary>
    public void EndBatch()
    {
        lock (_lock)
        {
            _readerHolds = false;
            if (_failed || _filling.IsEmpty || !TakeTurnToSend())
                return;
        }
        SendQueued();
    }

    private bool TakeTurnToSend()
    {
        if (_readerHolds || _flushing)
            return false;
        _flushing = true;
        return true;
    }

    /// <summary>Sends batches until none is queued; the caller took the turn.</summary>
    private void SendQueued()
    {
        while (true)
        {
            NbdReplyBatch batch;
            lock (_lock)
            {
                if (_failed || _filling.IsEmpty)
                {
                    _flushing = false;
                    return;
                }
                batch = _filling;
                _filling = _sending;
                _sending = batch;
                Sends++;
            }
            try
            {
                Send(batch);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                lock (_lock)
                {
                    _failed = true;
                    _flushing = false;
                    _filling.Clear();
                }
                batch.Clear();
                _onFailure(e);
                return;
            }
            batch.Clear();
        }
    }

    private void Send(NbdReplyBatch batch)
    {
        var segments = batch.Segments;
        // A blocking socket sends everything or fails; a short count would leave the stream unframed.
        var sent = segments.Count == 1 ? _socket.Send(segments[0].AsSpan(), SocketFlags.None) : _socket.Send(segments, SocketFlags.None);
        if (sent != batch.Length)
            throw new IOException($"sent {sent} of {batch.Length} bytes of replies");
    }
}
