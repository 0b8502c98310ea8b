using System.Threading.Tasks.Sources;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// An auto-reset wake-up for one waiter (a job's loop): anything that may give the loop work
/// (an operation finished, a write dirtied the bitmap, a verb arrived) calls <see cref="Set"/>.
/// A set that finds no waiter is remembered, so a wake-up between "check state" and "wait" is
/// never lost. Reusable without allocating (an <see cref="IValueTaskSource{TResult}"/>); only a
/// wait with a timeout creates a timer.
/// </summary>
internal sealed class AsyncSignal : IValueTaskSource<bool>
{
    private readonly Lock _signalLock = new();
    private readonly TimeProvider _time;
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private bool _set;
    private bool _waiting;
    private ITimer? _timer;

    public AsyncSignal(TimeProvider time) => _time = time;

    /// <summary>Wakes the waiter, or the next one if nobody waits now.</summary>
    public void Set()
    {
        lock (_signalLock)
        {
            if (!_waiting)
            {
                _set = true;
                return;
            }
            CompleteSignalLocked(true);
        }
    }

    /// <summary>Waits for <see cref="Set"/>; true when signalled, false when <paramref name="timeout"/> passed first.</summary>
    public ValueTask<bool> WaitAsync(TimeSpan? timeout = null)
    {
        lock (_signalLock)
        {
            if (_waiting)
                throw new InvalidOperationException("AsyncSignal supports a single waiter");
            if (_set)
            {
                _set = false;
                return new ValueTask<bool>(true);
            }
            if (timeout is { } t && t <= TimeSpan.Zero)
                return new ValueTask<bool>(false);
            _core.Reset();
            _waiting = true;
            var version = _core.Version;
            if (timeout is { } delay)
                _timer = _time.CreateTimer(static s => ((AsyncSignal)((object[])s!)[0]).OnTimeout((short)((object[])s)[1]), new object[] { this, version }, delay, Timeout.InfiniteTimeSpan);
            return new ValueTask<bool>(this, version);
        }
    }

    private void OnTimeout(short version)
    {
        lock (_signalLock)
        {
            if (_waiting && _core.Version == version)
                CompleteSignalLocked(false);
        }
    }

    private void CompleteSignalLocked(bool signalled)
    {
        _waiting = false;
        _timer?.Dispose();
        _timer = null;
        // Continuations run asynchronously, so completing under the lock cannot re-enter it.
        _core.SetResult(signalled);
    }

    bool IValueTaskSource<bool>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
