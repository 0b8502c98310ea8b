using System.Numerics;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.State;

/// <summary>
/// The activity log of one persistent bitmap (DRBD's activity log, drbd_actlog.c): the bitmap is cut
/// into extents of <see cref="BitmapActivityLogOptions.ExtentBytes"/>, at most
/// <see cref="BitmapActivityLogOptions.HotExtents"/> of them are hot (an LRU), and only a write into a
/// cold extent costs a journal write: its activation, which the write waits for before the image changes.
/// </summary>
/// <remarks>
/// <para><b>No acknowledged granule is lost.</b> After a crash a bitmap is its checkpoint (covering
/// journal sequence S) plus the records after S, replayed in order: a <see cref="JournalEntryKind.Mark"/>
/// marks its granules, an <see cref="JournalEntryKind.Activate"/> makes its extent hot, a
/// <see cref="JournalEntryKind.Retire"/> makes it cold again; every extent still hot at the end is
/// marked whole. Take a write W to granule g of extent E, acknowledged (or applied but not
/// acknowledged: it only reaches the image after its Ensure). Its Ensure marked g in the shadow and
/// found E hot or activated it, all under this object's lock, so E's activation A (sequence a) is
/// durable before W touches the image. Then one of:</para>
/// <list type="bullet">
/// <item>a checkpoint after W (writes quiesced, so W's mark is in its snapshot) holds g;</item>
/// <item>E is still hot: A, or a relog of it after A, comes after S and no retire follows it, so E is
/// marked whole;</item>
/// <item>E was evicted after W: the eviction took the lock after W's Ensure, so the shadow already held
/// g, and it wrote g's mark before the retire (lower sequence, same segment file: a retire that
/// survives a crash means its marks did too). A write after the eviction finds E cold and activates
/// it again (a higher sequence than the retire), and waits for that.</item>
/// </list>
/// <para>A checkpoint replaces the shadow by the stored content and makes every extent cold (the
/// activations it covers are no longer replayed); a fold, which drops the segments holding old
/// activations, first relogs every hot extent (<see cref="JournalEntryKind.Relog"/>, durable before
/// the fold stores anything), so it only folds marks.</para>
/// <para><b>The bound.</b> What a crash adds beyond the checkpoint and the marks is the extents hot at
/// the crash: at most <see cref="BitmapActivityLogOptions.HotExtents"/> × <see cref="BitmapActivityLogOptions.ExtentBytes"/>
/// bytes per bitmap. Retired extents come back exactly (the shadow's marks), never whole.</para>
/// <para>Per bitmap, not per node: checkpoints, granularity, recording and a job's hold are per bitmap,
/// and the activations one write makes for each of a node's bitmaps are appended together and share
/// one group commit, so a per-node log would save bytes, not syncs.</para>
/// <para>The shadow (the last checkpoint plus every granule a write has passed Ensure for since) is
/// also what a running job's working bitmap is checkpointed as (<see cref="BitmapDurability.DurableContent"/>).</para>
/// </remarks>
internal sealed class BitmapActivity
{
    // Taken on the write path; calls the journal's append (its own lock is a leaf) and nothing else.
    private readonly Lock _lock = new();
    private readonly BitmapDurability _owner;
    private readonly string _bitmap;
    private readonly DirtyBitmap _shadow;
    private readonly int _shift;
    private readonly long _granules;
    private readonly long _extentGranules;
    private readonly int _hotLimit;
    private readonly Dictionary<long, LinkedListNode<(long Extent, Task? Activation)>> _hot = [];
    // Most recently used first; the last is the one an eviction retires.
    private readonly LinkedList<(long Extent, Task? Activation)> _lru = new();

    public BitmapActivity(BitmapDurability owner, DirtyBitmap bitmap, BitmapActivityLogOptions options)
    {
        _owner = owner;
        _bitmap = bitmap.Name;
        _shadow = new DirtyBitmap(bitmap.Name, bitmap.Size, bitmap.Granularity);
        _shift = BitOperations.Log2((ulong)bitmap.Granularity);
        _granules = DirtyBitmap.GranulesFor(bitmap.Size, bitmap.Granularity);
        _extentGranules = Math.Max(1, options.ExtentBytes >> _shift);
        _hotLimit = options.HotExtents;
    }

    /// <summary>
    /// Marks [offset, offset+length) in the shadow and makes its extents hot: completes at once when
    /// they are, else when their activation (and any eviction it needed) is durable.
    /// </summary>
    public ValueTask EnsureAsync(string node, long offset, long length)
    {
        var firstExtent = (offset >> _shift) / _extentGranules;
        var lastExtent = Math.Min((offset + length - 1) >> _shift, _granules - 1) / _extentGranules;
        Task? wait = null;
        List<Task>? more = null;
        lock (_lock)
        {
            _shadow.MarkDirty(offset, length);
            List<JournalEntry>? appends = null;
            List<LinkedListNode<(long, Task?)>>? activated = null;
            for (var extent = firstExtent; extent <= lastExtent; extent++)
            {
                if (_hot.TryGetValue(extent, out var hot))
                {
                    // A failed activation (the journal failed) is no activation: the next write tries again.
                    if (hot.Value.Activation is { IsFaulted: true } or { IsCanceled: true })
                    {
                        Forget(hot);
                    }
                    else
                    {
                        if (hot != _lru.First)
                        {
                            _lru.Remove(hot);
                            _lru.AddFirst(hot);
                        }
                        if (hot.Value.Activation is { IsCompleted: false } pending)
                            Add(pending, ref wait, ref more);
                        continue;
                    }
                }
                appends ??= [];
                while (_hot.Count >= _hotLimit)
                    Evict(node, appends);
                var (first, count) = Range(extent);
                appends.Add(new JournalEntry(0, node, _bitmap, first, count, JournalEntryKind.Activate));
                var added = _lru.AddFirst((extent, null));
                _hot[extent] = added;
                (activated ??= []).Add(added);
                _owner.CountActivated();
            }
            if (appends is not null)
            {
                Task durable;
                try
                {
                    durable = _owner.Journal.AppendAsync(appends).AsTask();
                }
                catch
                {
                    // Never journaled: these extents must not pass for hot (the retired one stays hot
                    // in the journal, which only enlarges a recovery).
                    foreach (var added in activated!)
                        Forget(added);
                    throw;
                }
                foreach (var added in activated!)
                    added.Value = (added.Value.Item1, durable);
                Add(durable, ref wait, ref more);
            }
        }
        if (wait is null)
            return ValueTask.CompletedTask;
        if (more is null)
            return new ValueTask(wait);
        more.Add(wait);
        return new ValueTask(Task.WhenAll(more));
    }

    /// <summary>Writes an activation again for every hot extent (before a fold drops older segments); completes when durable.</summary>
    public Task RelogAsync(string node)
    {
        lock (_lock)
        {
            if (_hot.Count == 0)
                return Task.CompletedTask;
            var appends = new List<JournalEntry>(_hot.Count);
            foreach (var (extent, _) in _lru)
            {
                var (first, count) = Range(extent);
                appends.Add(new JournalEntry(0, node, _bitmap, first, count, JournalEntryKind.Relog));
            }
            _owner.CountRelogged(appends.Count);
            return _owner.Journal.AppendAsync(appends).AsTask();
        }
    }

    /// <summary>A checkpoint holding <paramref name="content"/> was stored (writes quiesced): the shadow is that content, and every extent is cold.</summary>
    public void Checkpointed(byte[] content)
    {
        lock (_lock)
        {
            _shadow.Deserialize(content);
            _owner.CountHot(-_hot.Count);
            _hot.Clear();
            _lru.Clear();
        }
    }

    public byte[] ShadowContent()
    {
        lock (_lock)
            return _shadow.Serialize();
    }

    public int HotExtents
    {
        get
        {
            lock (_lock)
                return _hot.Count;
        }
    }

    /// <summary>Retires the least recently used extent: its shadow marks, then the retire record (no wait: the activation after it in the same append is what the writer waits for).</summary>
    private void Evict(string node, List<JournalEntry> appends)
    {
        var coldest = _lru.Last!;
        var (first, count) = Range(coldest.Value.Extent);
        var offset = first << _shift;
        var length = Math.Min(count << _shift, _shadow.Size - offset);
        foreach (var (o, l) in _shadow.GetExtents(offset, length))
        {
            var firstGranule = o >> _shift;
            var lastGranule = (o + l - 1) >> _shift;
            appends.Add(new JournalEntry(0, node, _bitmap, firstGranule, lastGranule - firstGranule + 1, JournalEntryKind.Mark));
        }
        appends.Add(new JournalEntry(0, node, _bitmap, first, count, JournalEntryKind.Retire));
        Forget(coldest);
        _owner.CountEvicted();
    }

    private void Forget(LinkedListNode<(long Extent, Task? Activation)> hot)
    {
        _lru.Remove(hot);
        _hot.Remove(hot.Value.Extent);
        _owner.CountHot(-1);
    }

    private (long First, long Count) Range(long extent)
    {
        var first = extent * _extentGranules;
        return (first, Math.Min(_extentGranules, _granules - first));
    }

    private static void Add(Task task, ref Task? wait, ref List<Task>? more)
    {
        if (wait is null)
            wait = task;
        else if (!ReferenceEquals(wait, task))
            (more ??= []).Add(task);
    }
}
