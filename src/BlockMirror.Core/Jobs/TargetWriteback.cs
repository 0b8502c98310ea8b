using System.Collections.Concurrent;
using BlockMirror.Core.Images;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// Early writeback behind a mirror's copy: once the job has written <see cref="Step"/> bytes to its
/// target, one batch of hints (<see cref="IWritebackTarget.StartWriteback"/>) starts the kernel
/// writing the chunks completed since the last batch to the device, so the flush before READY
/// (QEMU's mirror_flush) finds about one step left instead of the whole copy. Without it nothing is
/// written back before that flush: the kernel's background threshold (10 % of memory) is larger
/// than most copies, and the flush of a 1 GiB copy was half of the mirror's time.
/// </summary>
/// <remarks>
/// Bounded so the target's writes do not crowd out the source's reads and do not cut chunks still
/// being written: only ranges of completed chunks are hinted (a whole-file hint also started pages
/// of the copies in flight, so the file system allocated them in pieces), at most one batch runs
/// per job, on a thread-pool thread (a hint may block while the device queue is full, which must not
/// hold a copy), and a copy smaller than one step is never hinted. A target that refuses (O_DIRECT,
/// a file that cannot, an error) is not asked again: the flush writes everything as it always did.
/// The hint never replaces that flush and changes no job state.
/// </remarks>
internal sealed class TargetWriteback : IThreadPoolWorkItem
{
    /// <summary>The most written between two batches: a few dozen chunks the device can merge.</summary>
    internal const long MaxStep = 32L << 20;

    /// <summary>The least: below this a hint costs more than the writeback it moves.</summary>
    internal const long MinStep = 1L << 20;

    /// <summary>
    /// A merged range shorter than this is left to the flush: scattered small pieces (an incremental's
    /// 64 KiB granules) hinted one by one were written back in more, smaller requests than the flush's
    /// one ordered pass makes of them (incremental B, 1311 × 64 KiB: paired 1.14× slower, more CPU).
    /// </summary>
    internal const long MinRange = 1L << 20;

    private readonly IWritebackTarget? _target;
    private readonly ConcurrentQueue<(long Offset, long Length)> _completed = new();
    // Only the running batch touches it (one at a time).
    private readonly List<(long Offset, long Length)> _batch = [];
    private long _unhinted;
    private int _running;
    private long _hints;
    private volatile bool _refused;

    /// <param name="target">The target's image (one without <see cref="IWritebackTarget"/> is never hinted).</param>
    /// <param name="size">The target's size: a small one is hinted in quarters, so its flush still finds little.</param>
    public TargetWriteback(IBlockImage target, long size)
    {
        _target = target as IWritebackTarget;
        Step = Math.Clamp(size / 4, MinStep, MaxStep);
    }

    /// <summary>Bytes written between two batches of hints.</summary>
    public long Step { get; }

    /// <summary>Hints (one per merged range) the kernel took.</summary>
    public long Hints => Interlocked.Read(ref _hints);

    /// <summary>The target refused a hint (or cannot take one); none is asked again.</summary>
    public bool Refused => _refused || _target is null;

    /// <summary>
    /// The job finished writing [<paramref name="offset"/>, +<paramref name="length"/>) of the target
    /// (on the copy's thread, after the write): queues a batch once a step has gathered and none is
    /// running; returns at once.
    /// </summary>
    public void Written(long offset, long length)
    {
        if (_target is null || _refused)
            return;
        _completed.Enqueue((offset, length));
        Interlocked.Add(ref _unhinted, length);
        TryQueueBatch();
    }

    /// <summary>Queues a batch when a step has gathered and none runs; what it counts is subtracted, so no concurrent write is lost from the count.</summary>
    private void TryQueueBatch()
    {
        var gathered = Interlocked.Read(ref _unhinted);
        if (gathered < Step || _refused || Interlocked.CompareExchange(ref _running, 1, 0) != 0)
            return;
        Interlocked.Add(ref _unhinted, -gathered);
        ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
    }

    void IThreadPoolWorkItem.Execute()
    {
        try
        {
            HintCompleted();
        }
        catch (Exception)
        {
            // Only a hint: whatever went wrong, the flush before READY writes and reports it all.
            _refused = true;
        }
        finally
        {
            _batch.Clear();
            Volatile.Write(ref _running, 0);
        }
        // A step may have gathered while this batch ran, with no write left to notice it.
        TryQueueBatch();
    }

    /// <summary>Hints every completed range queued so far, in file order, adjacent ones merged into one call, short ones left to the flush.</summary>
    private void HintCompleted()
    {
        while (_completed.TryDequeue(out var range))
            _batch.Add(range);
        _batch.Sort(static (a, b) => a.Offset.CompareTo(b.Offset));
        var i = 0;
        while (i < _batch.Count && !_refused)
        {
            var (offset, end) = (_batch[i].Offset, _batch[i].Offset + _batch[i].Length);
            for (i++; i < _batch.Count && _batch[i].Offset <= end; i++)
                end = Math.Max(end, _batch[i].Offset + _batch[i].Length);
            if (end - offset < MinRange)
                continue;
            if (!_target!.StartWriteback(offset, end - offset))
            {
                _refused = true;
                return;
            }
            Interlocked.Increment(ref _hints);
        }
    }
}
