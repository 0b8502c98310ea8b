using System.Numerics;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.State;

/// <summary>Replays journal entries onto a bitmap: what a stored checkpoint plus the entries after it make.</summary>
public static class BitmapFold
{
    /// <summary>
    /// A crash recovery's replay (see <see cref="BitmapActivity"/>): every entry with a sequence after
    /// <paramref name="after"/>, in order: marks set their granules, activations make their extent hot,
    /// retires make it cold; every extent hot at the end is marked whole. False when an entry lies
    /// outside the bitmap (it was not written for a bitmap of this shape, so the result proves nothing).
    /// </summary>
    public static bool Apply(DirtyBitmap bitmap, IEnumerable<JournalEntry> entries, long after) =>
        Apply(bitmap, entries, after, markHot: true, out _);

    /// <param name="markHot">
    /// True for a crash recovery. False for a fold of sealed segments while the service runs: the extents
    /// hot then were relogged after the sealed part (durably, before the fold), so their activations here
    /// add nothing, and only marks are folded.
    /// </param>
    /// <param name="hotGranules">Granules marked only because their extent was hot at the end: what the replay adds beyond the exact marks.</param>
    public static bool Apply(DirtyBitmap bitmap, IEnumerable<JournalEntry> entries, long after, bool markHot, out long hotGranules)
    {
        hotGranules = 0;
        var shift = BitOperations.Log2((uint)bitmap.Granularity);
        var granules = (bitmap.Size + bitmap.Granularity - 1) >> shift;
        var hot = new Dictionary<long, long>();
        foreach (var e in entries)
        {
            if (e.Sequence <= after)
                continue;
            if (e.FirstGranule < 0 || e.GranuleCount <= 0 || e.FirstGranule > granules - e.GranuleCount)
                return false;
            switch (e.Kind)
            {
                case JournalEntryKind.Activate or JournalEntryKind.Relog:
                    hot[e.FirstGranule] = e.GranuleCount;
                    break;
                case JournalEntryKind.Retire:
                    hot.Remove(e.FirstGranule);
                    break;
                default:
                    Mark(bitmap, shift, e.FirstGranule, e.GranuleCount);
                    break;
            }
        }
        if (!markHot)
            return true;
        var before = bitmap.DirtyGranules;
        foreach (var (first, count) in hot)
            Mark(bitmap, shift, first, count);
        hotGranules = bitmap.DirtyGranules - before;
        return true;
    }

    /// <summary>
    /// The content of a stored bitmap with the entries after its checkpoint folded in, or null when
    /// it cannot be (no content, content of another shape, an entry outside it).
    /// </summary>
    /// <param name="markHot">As for <see cref="Apply(DirtyBitmap, IEnumerable{JournalEntry}, long, bool, out long)"/>.</param>
    public static byte[]? Fold(BitmapRecord row, long nodeSize, IEnumerable<JournalEntry> entries, bool markHot)
    {
        if (row.Content is null || row.JournalSequence is not { } after)
            return null;
        try
        {
            var bitmap = new DirtyBitmap(row.Name, nodeSize, row.Granularity);
            bitmap.Deserialize(row.Content);
            return Apply(bitmap, entries, after, markHot, out _) ? bitmap.Serialize() : null;
        }
        catch (ArgumentException)
        {
            return null;
        }
    }

    private static void Mark(DirtyBitmap bitmap, int shift, long first, long count)
    {
        var offset = first << shift;
        bitmap.MarkDirty(offset, Math.Min(count << shift, bitmap.Size - offset));
    }
}
