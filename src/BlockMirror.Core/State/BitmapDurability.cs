using System.Runtime.CompilerServices;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>
/// Decides what of a persistent bitmap must go to the journal before a write: keeps, per bitmap, an
/// activity log (<see cref="BitmapActivity"/>): a bounded set of hot extents and a shadow of every
/// granule written since the last checkpoint. A write into a hot extent costs a shadow mark and an
/// LRU touch, no I/O; a write into a cold extent waits for one journal append (its activation, and the
/// retired extent's marks when the hot set is full), shared with every writer of the same group commit.
/// </summary>
/// <remarks>
/// The shadow, not the bitmap itself, is what an eviction writes and what a job's working bitmap is
/// checkpointed as, because a job's working bitmap loses bits as the copy loop clears them (clears are
/// not journaled): only the job's exit may make those clears durable. A checkpoint replaces the shadow
/// by the stored content (<see cref="Checkpointed"/>), with the node's writes quiesced.
/// Memory: one more bit per granule for each persistent bitmap, plus its hot extents.
/// </remarks>
public sealed class BitmapDurability(IBitmapJournal journal, BitmapActivityLogOptions options)
{
    private readonly ConditionalWeakTable<DirtyBitmap, BitmapActivity> _activity = new();
    private long _hot;
    private long _activated;
    private long _evicted;
    private long _relogged;

    public BitmapDurability(IBitmapJournal journal) : this(journal, new BitmapActivityLogOptions())
    {
    }

    public IBitmapJournal Journal { get; } = journal;

    public BitmapActivityLogOptions Options { get; } = options.Problem() is { } problem ? throw new ArgumentException(problem, nameof(options)) : options;

    public ActivityLogStatistics Statistics =>
        new(Interlocked.Read(ref _hot), Interlocked.Read(ref _activated), Interlocked.Read(ref _evicted), Interlocked.Read(ref _relogged));

    /// <summary>
    /// Makes [offset, offset+length) of <paramref name="bitmap"/> durable (the node's
    /// <see cref="BlockNode.EnsureBitmapRangeDurable"/> hook): completes at once when its extents are hot.
    /// </summary>
    public ValueTask EnsureAsync(BlockNode node, DirtyBitmap bitmap, long offset, long length)
    {
        if (length <= 0)
            return ValueTask.CompletedTask;
        return ActivityOf(bitmap).EnsureAsync(node.Name, offset, length);
    }

    /// <summary>
    /// Writes an activation again for every hot extent of <paramref name="bitmap"/>, before a fold drops
    /// the segments that hold the first ones; completes when durable.
    /// </summary>
    public Task RelogAsync(BlockNode node, DirtyBitmap bitmap) =>
        _activity.TryGetValue(bitmap, out var activity) ? activity.RelogAsync(node.Name) : Task.CompletedTask;

    /// <summary>
    /// What is durable of <paramref name="bitmap"/> at granule precision (the last checkpoint plus every
    /// granule written since), serialized; null when nothing was ever stored for it. Taken with the
    /// node's writes quiesced, it holds every granule a write touched so far.
    /// </summary>
    public byte[]? DurableContent(DirtyBitmap bitmap) =>
        _activity.TryGetValue(bitmap, out var activity) ? activity.ShadowContent() : null;

    /// <summary>
    /// The stored checkpoint of <paramref name="bitmap"/> now holds <paramref name="content"/> and covers
    /// every journal record so far: the shadow becomes it and every extent is cold again.
    /// </summary>
    public void Checkpointed(DirtyBitmap bitmap, byte[] content) => ActivityOf(bitmap).Checkpointed(content);

    /// <summary>Extents of <paramref name="bitmap"/> hot now (tests).</summary>
    public int HotExtentsOf(DirtyBitmap bitmap) => _activity.TryGetValue(bitmap, out var activity) ? activity.HotExtents : 0;

    internal void CountActivated()
    {
        Interlocked.Increment(ref _activated);
        Interlocked.Increment(ref _hot);
    }

    internal void CountEvicted() => Interlocked.Increment(ref _evicted);

    internal void CountRelogged(int extents) => Interlocked.Add(ref _relogged, extents);

    internal void CountHot(int delta) => Interlocked.Add(ref _hot, delta);

    // TryGetValue first: the write path allocates no callback once the bitmap has its log.
    private BitmapActivity ActivityOf(DirtyBitmap bitmap) =>
        _activity.TryGetValue(bitmap, out var activity) ? activity : _activity.GetValue(bitmap, b => new BitmapActivity(this, b, Options));
}
