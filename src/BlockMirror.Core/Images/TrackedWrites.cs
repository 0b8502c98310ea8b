namespace BlockMirror.Core.Images;

/// <summary>
/// The writes in flight on a direct image (QEMU's tracked requests with serialising requests, as
/// bdrv_make_request_serialising uses them for an unaligned write's read-modify-write). A
/// read-modify-write reads whole aligned blocks and writes them back: any other write to those
/// blocks in between would be undone by it, bytes the read-modify-write never meant to touch. So it
/// waits for every earlier write overlapping its span, and every later write overlapping it waits
/// for it. Aligned writes never wait for each other. A write waits only for writes registered
/// before it, so no two can wait for each other.
/// </summary>
internal sealed class TrackedWrites
{
    private readonly Lock _lock = new();
    private readonly List<TrackedWrite> _inFlight = [];
    private readonly Stack<TrackedWrite> _free = new();
    private int _serialising; // in flight; while 0 an aligned write need not look at the others

    /// <summary>Registers a write of the aligned span [start, end) and returns once it may run.</summary>
    public ValueTask<TrackedWrite> BeginAsync(long start, long end, bool serialising)
    {
        TrackedWrite write;
        TaskCompletionSource? blocker;
        lock (_lock)
        {
            write = _free.Count > 0 ? _free.Pop() : new TrackedWrite();
            write.Start = start;
            write.End = end;
            write.Serialising = serialising;
            write.Done = null;
            _inFlight.Add(write);
            if (serialising)
                _serialising++;
            blocker = serialising || _serialising > 0 ? BlockerLocked(write) : null;
        }
        return blocker is null ? new ValueTask<TrackedWrite>(write) : WaitAsync(write, blocker);
    }

    /// <summary>The write is finished: writes waiting for it run.</summary>
    public void End(TrackedWrite write)
    {
        TaskCompletionSource? done;
        lock (_lock)
        {
            _inFlight.Remove(write);
            if (write.Serialising)
                _serialising--;
            done = write.Done;
            write.Done = null;
            _free.Push(write);
        }
        done?.SetResult();
    }

    private async ValueTask<TrackedWrite> WaitAsync(TrackedWrite write, TaskCompletionSource blocker)
    {
        while (true)
        {
            await blocker.Task.ConfigureAwait(false);
            lock (_lock)
            {
                var next = BlockerLocked(write);
                if (next is null)
                    return write;
                blocker = next;
            }
        }
    }

    /// <summary>The completion of the first earlier write <paramref name="write"/> must wait for, or null.</summary>
    private TaskCompletionSource? BlockerLocked(TrackedWrite write)
    {
        foreach (var earlier in _inFlight)
        {
            if (ReferenceEquals(earlier, write))
                return null;
            if ((write.Serialising || earlier.Serialising) && earlier.Overlaps(write.Start, write.End))
                return earlier.Done ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        return null;
    }
}
