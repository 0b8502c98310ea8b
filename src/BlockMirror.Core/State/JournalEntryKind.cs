namespace BlockMirror.Core.State;

/// <summary>What a journal record says (its <c>kind</c> byte on disk).</summary>
/// <remarks>
/// Journals written before the activity log hold <see cref="Mark"/> records only, and are read as they
/// always were: exact granule ranges.
/// </remarks>
public enum JournalEntryKind : byte
{
    /// <summary>Granules [first, first+count) may be dirty (exact; also what an eviction writes for the extent it retires).</summary>
    Mark = 1,

    /// <summary>
    /// The extent [first, first+count) of the bitmap is hot: writes into it are acknowledged without a
    /// journal write, so a recovery marks every granule of it unless a later <see cref="Retire"/> names it.
    /// </summary>
    Activate = 2,

    /// <summary>
    /// The extent [first, first+count) is no longer hot: the <see cref="Mark"/> records just before this
    /// one hold every granule written in it since the bitmap's checkpoint.
    /// </summary>
    Retire = 3,

    /// <summary>
    /// <see cref="Activate"/> written again for an extent that was already hot, so that a fold may drop
    /// the segment holding its first activation; it does not count towards a segment's size (a fold
    /// writes these, and must not fill the segment that triggers the next fold).
    /// </summary>
    Relog = 4,
}
