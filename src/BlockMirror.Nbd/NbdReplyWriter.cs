using System.Buffers;
using System.Net.Sockets;

namespace BlockMirror.Nbd;

/// <summary>
/// A server connection's output: replies are queued whole and sent together, several in one
/// sendmsg (the write buffers of Garnet and Npgsql are the model). While the connection's reader
/// holds a batch open, replies only queue, and the reader sends them all itself when it is about
/// to wait: the replies of a burst of requests served on the reader go out in one send, with no
/// thread switch. A reply queued from elsewhere (a request that continued on the thread pool) wakes
/// the connection's sender thread, which sends everything queued by then and whatever is queued
/// meanwhile; so a thread-pool thread never blocks on a client that does not read its replies.
/// One send at a time; replies are never split, so chunks of different requests never interleave
/// inside a message. A failed send calls <c>onFailure</c> once and everything queued later is
/// dropped: the stream is no longer framed.
/// Replies not yet sent are bounded: past <see cref="DefaultBacklogLimit"/> bytes the reader takes no
/// new request (<see cref="WaitForRoom"/>) until the client has read enough of them, as QEMU's
/// request coroutine and nbdkit's worker thread wait in their send; without it, a client that sends
/// reads and never reads the replies makes the server hold every reply in memory.
/// </summary>
internal sealed class NbdReplyWriter : IDisposable
{
    /// <summary>Unsent reply bytes past which the reader stops taking requests: many 1 MiB replies in flight, not a client's whole backlog.</summary>
    public const long DefaultBacklogLimit = 16L * 1024 * 1024;

    private readonly NbdChannel _channel;
    private readonly Action<Exception> _onFailure;
    private readonly Lock _lock = new();
    private readonly SemaphoreSlim _wakeSender = new(0);
    private readonly ManualResetEventSlim _room = new(initialState: true);
    private readonly long _backlogLimit;
    private NbdReplyBatch _filling = new();
    private NbdReplyBatch _sending = new();
    private Thread? _sender;
    private TaskCompletionSource? _idle;
    private bool _readerHolds;
    private bool _flushing;
    private bool _failed;
    private bool _disposed;
    private long _backlog;
    private volatile bool _readerSends;
    private volatile bool _readerWaitsForRoom;

    public NbdReplyWriter(NbdChannel channel, Action<Exception> onFailure, long backlogLimit = DefaultBacklogLimit)
    {
        _channel = channel;
        _onFailure = onFailure;
        _backlogLimit = backlogLimit;
    }

    /// <summary>Sends made (each with one or more replies); for tests of the coalescing.</summary>
    public long Sends { get; private set; }

    /// <summary>Replies queued; with <see cref="Sends"/>, how many shared a send.</summary>
    public long Replies { get; private set; }

    /// <summary>Bytes of replies queued and not sent yet.</summary>
    public long Backlog => Volatile.Read(ref _backlog);

    /// <summary>The most <see cref="Backlog"/> ever was; for tests of the bound.</summary>
    public long PeakBacklog { get; private set; }

    /// <summary>True while the reader sends its batch itself (in <see cref="EndBatch"/>); for tests.</summary>
    public bool ReaderSends => _readerSends;

    /// <summary>True while the reader waits in <see cref="WaitForRoom"/>; for tests.</summary>
    public bool ReaderWaitsForRoom => _readerWaitsForRoom;

    /// <summary>True when the replies not sent yet exceed the limit: the reader must wait before taking another request.</summary>
    public bool IsBackedUp => !_room.IsSet;

    /// <summary>Queues a copy of a small reply.</summary>
    public void Enqueue(ReadOnlySpan<byte> reply)
    {
        lock (_lock)
        {
            if (_failed || _disposed)
                return;
            _filling.AddCopy(reply);
            if (!WakeSenderLocked(reply.Length))
                return;
        }
        _wakeSender.Release();
    }

    /// <summary>Queues the first <paramref name="length"/> bytes of an <c>ArrayPool</c> buffer; the writer returns it to the pool.</summary>
    public void EnqueuePooled(byte[] buffer, int length) => Enqueue(buffer, 0, length, aligned: false);

    /// <summary>Queues [offset, +length) of a buffer from <see cref="NbdAlignedBuffers"/>; the writer returns it.</summary>
    public void EnqueueAligned(byte[] buffer, int offset, int length) => Enqueue(buffer, offset, length, aligned: true);

    /// <summary>Queues [offset, +length) of a pooled buffer (<see cref="NbdAlignedBuffers.Return(byte[], bool)"/> says which pool); the writer returns it.</summary>
    public void Enqueue(byte[] buffer, int offset, int length, bool aligned)
    {
        lock (_lock)
        {
            if (_failed || _disposed)
            {
                NbdAlignedBuffers.Return(buffer, aligned);
                return;
            }
            _filling.AddPooled(buffer, offset, length, aligned);
            if (!WakeSenderLocked(length))
                return;
        }
        _wakeSender.Release();
    }

    /// <summary>The reader starts a batch: replies queued until <see cref="EndBatch"/> wait for it.</summary>
    public void BeginBatch()
    {
        lock (_lock)
            _readerHolds = true;
    }

    /// <summary>The reader is about to wait: it sends everything queued now, unless a send is already running.</summary>
    public void EndBatch()
    {
        lock (_lock)
        {
            _readerHolds = false;
            if (_failed || _flushing || _filling.IsEmpty)
                return;
            _flushing = true;
        }
        _readerSends = true;
        try
        {
            SendQueued();
        }
        finally
        {
            _readerSends = false;
        }
    }

    /// <summary>
    /// Blocks while the replies not sent yet exceed the limit (the client does not read them fast
    /// enough); the caller has sent its own batch first (<see cref="EndBatch"/>). Returns at once when
    /// sending failed or the writer is disposed; throws when <paramref name="cancellationToken"/> fires.
    /// </summary>
    public void WaitForRoom(CancellationToken cancellationToken)
    {
        if (_room.IsSet)
            return;
        _readerWaitsForRoom = true;
        try
        {
            _room.Wait(cancellationToken);
        }
        finally
        {
            _readerWaitsForRoom = false;
        }
    }

    /// <summary>
    /// Completes once every reply queued so far has been sent (or sending failed): a request's work
    /// ends when its reply is queued, and the connection must not be shut before the reply is out.
    /// </summary>
    public Task WhenAllSentAsync()
    {
        Task idle;
        lock (_lock)
        {
            if (_failed || _disposed || (!_flushing && _filling.IsEmpty))
                return Task.CompletedTask;
            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            idle = _idle.Task;
            if (_flushing || _readerHolds)
                return idle;
            _flushing = true; // queued but nobody sending (cannot happen while the rules above hold; cheap to cover)
            EnsureSenderLocked();
        }
        _wakeSender.Release();
        return idle;
    }

    /// <summary>Stops the sender thread; replies queued later are dropped.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            _filling.Clear();
            _backlog = 0;
        }
        _room.Set();
        _wakeSender.Release();
        ReleaseIdleWaiters();
    }

    /// <summary>Counts a queued reply; true when the sender thread must be woken to send it.</summary>
    private bool WakeSenderLocked(int length)
    {
        Replies++;
        _backlog += length;
        PeakBacklog = Math.Max(PeakBacklog, _backlog);
        if (_backlog > _backlogLimit)
            _room.Reset();
        if (_readerHolds || _flushing)
            return false;
        _flushing = true;
        EnsureSenderLocked();
        return true;
    }

    private void EnsureSenderLocked()
    {
        if (_sender is not null)
            return;
        _sender = new Thread(SendOnWake) { IsBackground = true, Name = "NBD replies" };
        _sender.Start();
    }

    private void SendOnWake()
    {
        while (true)
        {
            _wakeSender.Wait();
            lock (_lock)
            {
                if (_disposed)
                    return;
            }
            SendQueued();
        }
    }

    /// <summary>Sends batches until none is queued; the caller took the turn (<c>_flushing</c>).</summary>
    private void SendQueued()
    {
        while (true)
        {
            NbdReplyBatch batch;
            lock (_lock)
            {
                if (_failed || _disposed || _filling.IsEmpty)
                {
                    _flushing = false;
                    break;
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
                    _backlog = 0;
                }
                _room.Set();
                batch.Clear();
                _onFailure(e);
                break;
            }
            CountSent(batch.Length);
            batch.Clear();
        }
        ReleaseIdleWaiters();
    }

    /// <summary>A batch has left: its bytes no longer count against the limit.</summary>
    private void CountSent(int length)
    {
        lock (_lock)
        {
            _backlog -= length;
            if (_backlog <= _backlogLimit)
                _room.Set();
        }
    }

    /// <summary>Completes <see cref="WhenAllSentAsync"/> unless a send started again meanwhile (it will then).</summary>
    private void ReleaseIdleWaiters()
    {
        TaskCompletionSource? idle;
        lock (_lock)
        {
            if (_flushing && !_failed && !_disposed)
                return;
            idle = _idle;
            _idle = null;
        }
        idle?.TrySetResult();
    }

    private void Send(NbdReplyBatch batch) => _channel.Send(batch.Segments, batch.Length);
}
