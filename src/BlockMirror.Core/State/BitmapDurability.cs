using System.Numerics;
using System.Runtime.CompilerServices;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>
/// Decides which ranges of a persistent bitmap must go to the journal: keeps, per bitmap, a shadow of
/// what is durable (the last checkpoint plus every range journaled since), and journals a range only
/// when the shadow does not already cover it. The steady state (a write to granules already durable)
/// costs a bit test, no I/O.
/// </summary>
/// <remarks>
/// The shadow, not the bitmap itself, is the test, because a job's working bitmap loses bits as the
/// copy loop clears them (clears are not journaled): a granule written again after it was copied is
/// still durable and needs no second fsync. The shadow only grows between checkpoints; a checkpoint
/// replaces it by the stored content (<see cref="Checkpointed"/>), with the node's writes quiesced.
/// Memory: one more bit per granule for each persistent bitmap.
/// </remarks>
public sealed class BitmapDurability(IBitmapJournal journal)
{
    private static readonly ConditionalWeakTable<DirtyBitmap, DirtyBitmap>.CreateValueCallback NewShadow =
        b => new DirtyBitmap(b.Name, b.Size, b.Granularity);

    private readonly ConditionalWeakTable<DirtyBitmap, DirtyBitmap> _durable = new();

    public IBitmapJournal Journal { get; } = journal;

    /// <summary>
    /// Makes [offset, offset+length) of <paramref name="bitmap"/> durable (the node's
    /// <see cref="BlockNode.EnsureBitmapRangeDurable"/> hook): completes at once when it already is.
    /// </summary>
    public ValueTask EnsureAsync(BlockNode node, DirtyBitmap bitmap, long offset, long length)
    {
        if (length <= 0)
            return ValueTask.CompletedTask;
        var shadow = _durable.GetValue(bitmap, NewShadow);
        if (shadow.TryGetFirstExtent(offset, length, out _, out var covered, out var dirty) && dirty && covered == length)
            return ValueTask.CompletedTask;
        return AppendAsync(node.Name, bitmap, shadow, offset, length);
    }

    private async ValueTask AppendAsync(string node, DirtyBitmap bitmap, DirtyBitmap shadow, long offset, long length)
    {
        var shift = BitOperations.Log2((uint)bitmap.Granularity);
        var first = offset >> shift;
        var last = (offset + length - 1) >> shift;
        await Journal.AppendAsync(node, bitmap.Name, first, last - first + 1).ConfigureAwait(false);
        // Only once durable: a concurrent write to the same granules must not skip the journal before this one's fsync.
        shadow.MarkDirty(offset, length);
    }

    /// <summary>
    /// What is durable of <paramref name="bitmap"/> (the last checkpoint plus every range journaled
    /// since), serialized; null when nothing was ever stored for it. Taken with the node's writes
    /// quiesced, it holds every entry the journal has for it so far.
    /// </summary>
    public byte[]? DurableContent(DirtyBitmap bitmap) =>
        _durable.TryGetValue(bitmap, out var shadow) ? shadow.Serialize() : null;

    /// <summary>The stored checkpoint of <paramref name="bitmap"/> now holds <paramref name="content"/>.</summary>
    public void Checkpointed(DirtyBitmap bitmap, byte[] content) => _durable.GetValue(bitmap, NewShadow).Deserialize(content);
}
