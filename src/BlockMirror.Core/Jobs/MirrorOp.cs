namespace BlockMirror.Core.Jobs;

/// <summary>
/// A range a mirror has in flight: a background claim (granule-aligned, whose bits were cleared
/// and whose chunks are being copied) or an active write (write-blocking mode, any byte range).
/// Registered in the job's op list so overlapping work waits or stays clear (QEMU's MirrorOp and
/// its in-flight bitmap). Guarded by the job's op lock except the chunk counter.
/// </summary>
internal sealed class MirrorOp
{
    private TaskCompletionSource? _done;

    public MirrorOp(long offset, long length, bool active)
    {
        Offset = offset;
        Length = length;
        Active = active;
    }

    public long Offset { get; }

    public long Length { get; }

    public long End => Offset + Length;

    /// <summary>A guest write in write-blocking mode (not a background copy).</summary>
    public bool Active { get; }

    /// <summary>References that keep a claim in flight: the dispatcher's own plus one per chunk.</summary>
    public int Pending;

    public bool Overlaps(long offset, long end) => Offset < end && offset < End;

    /// <summary>A task that completes when the op is done; created only when someone waits (op lock held).</summary>
    public Task WhenDoneOpsLocked() => (_done ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    /// <summary>Takes the waiters' completion (op lock held); the caller completes it outside the lock.</summary>
    public TaskCompletionSource? TakeWaitersOpsLocked()
    {
        var done = _done;
        _done = null;
        return done;
    }
}
