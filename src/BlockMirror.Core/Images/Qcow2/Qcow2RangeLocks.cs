namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Locks on ranges of guest clusters, shared or exclusive (the job of QEMU's cluster_allocs list and
/// handle_dependencies): a request that changes what a cluster maps to (allocation, copy-on-write,
/// zeroing, discard) holds its clusters exclusively, so no read or in-place write can use a host
/// cluster that is being replaced or freed, and two allocations never race for one guest cluster.
/// Reads and in-place writes share. Waiters are granted in arrival order among those they overlap,
/// so a stream of reads cannot starve a write. Nothing is allocated unless a request has to wait.
/// </summary>
internal sealed class Qcow2RangeLocks
{
    private readonly Lock _gate = new();
    private readonly List<Holder> _held = [];
    private readonly List<Holder> _waiting = [];
    private readonly Stack<Holder> _pool = [];

    /// <summary>A granted range; hand it back to <see cref="Release"/> exactly once and forget it.</summary>
    internal sealed class Holder
    {
        internal long Start;
        internal long End;
        internal bool Exclusive;
        internal TaskCompletionSource? Granted;

        internal bool Conflicts(Holder other) =>
            Start < other.End && other.Start < End && (Exclusive || other.Exclusive);
    }

    /// <summary>Locks guest clusters [<paramref name="start"/>, <paramref name="end"/>).</summary>
    public ValueTask<Holder> AcquireAsync(long start, long end, bool exclusive)
    {
        Holder h;
        lock (_gate)
        {
            h = _pool.TryPop(out var pooled) ? pooled : new Holder();
            h.Start = start;
            h.End = end;
            h.Exclusive = exclusive;
            if (CanGrant(h, _waiting.Count))
            {
                _held.Add(h);
                return new ValueTask<Holder>(h);
            }
            h.Granted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiting.Add(h);
        }
        return WaitAsync(h);
    }

    /// <summary>Locks guest clusters [<paramref name="start"/>, <paramref name="end"/>) if that needs no wait (an inline write); else false.</summary>
    public bool TryAcquire(long start, long end, bool exclusive, out Holder? holder)
    {
        lock (_gate)
        {
            var h = _pool.TryPop(out var pooled) ? pooled : new Holder();
            h.Start = start;
            h.End = end;
            h.Exclusive = exclusive;
            h.Granted = null;
            if (CanGrant(h, _waiting.Count))
            {
                _held.Add(h);
                holder = h;
                return true;
            }
            _pool.Push(h);
        }
        holder = null;
        return false;
    }

    public void Release(Holder h)
    {
        List<TaskCompletionSource>? granted = null;
        lock (_gate)
        {
            _held.Remove(h);
            for (var i = 0; i < _waiting.Count;)
            {
                var w = _waiting[i];
                if (CanGrant(w, i))
                {
                    _waiting.RemoveAt(i);
                    _held.Add(w);
                    (granted ??= []).Add(w.Granted!);
                }
                else
                {
                    i++;
                }
            }
            h.Granted = null;
            _pool.Push(h);
        }
        if (granted is not null)
        {
            foreach (var g in granted)
                g.SetResult();
        }
    }

    private static async ValueTask<Holder> WaitAsync(Holder h)
    {
        await h.Granted!.Task.ConfigureAwait(false);
        return h;
    }

    /// <summary>Free of every holder and of every earlier waiter it overlaps (arrival order among overlaps).</summary>
    private bool CanGrant(Holder h, int waitersBefore)
    {
        foreach (var held in _held)
        {
            if (held.Conflicts(h))
                return false;
        }
        for (var i = 0; i < waitersBefore; i++)
        {
            if (_waiting[i].Conflicts(h))
                return false;
        }
        return true;
    }
}
