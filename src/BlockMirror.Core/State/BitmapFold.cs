using System.Numerics;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.State;

/// <summary>Replays journal entries onto a bitmap: what a stored checkpoint plus the entries after it make.</summary>
public static class BitmapFold
{
    /// <summary>
    /// Marks every entry of <paramref name="entries"/> with a sequence after <paramref name="after"/>
    /// dirty in <paramref name="bitmap"/>. False when an entry lies outside the bitmap (it was not
    /// written for a bitmap of this shape, so the result proves nothing).
    /// </summary>
    public static bool Apply(DirtyBitmap bitmap, IEnumerable<JournalEntry> entries, long after)
    {
        var shift = BitOperations.Log2((uint)bitmap.Granularity);
        var granules = (bitmap.Size + bitmap.Granularity - 1) >> shift;
        foreach (var e in entries)
        {
            if (e.Sequence <= after)
                continue;
            if (e.FirstGranule < 0 || e.GranuleCount <= 0 || e.FirstGranule > granules - e.GranuleCount)
                return false;
            var offset = e.FirstGranule << shift;
            bitmap.MarkDirty(offset, Math.Min(e.GranuleCount << shift, bitmap.Size - offset));
        }
        return true;
    }

    /// <summary>
    /// The content of a stored bitmap with the entries after its checkpoint folded in, or null when
    /// it cannot be (no content, content of another shape, an entry outside it).
    /// </summary>
    public static byte[]? Fold(BitmapRecord row, long nodeSize, IEnumerable<JournalEntry> entries)
    {
        if (row.Content is null || row.JournalSequence is not { } after)
            return null;
        try
        {
            var bitmap = new DirtyBitmap(row.Name, nodeSize, row.Granularity);
            bitmap.Deserialize(row.Content);
            return Apply(bitmap, entries, after) ? bitmap.Serialize() : null;
        }
        catch (ArgumentException)
        {
            return null;
        }
    }
}
