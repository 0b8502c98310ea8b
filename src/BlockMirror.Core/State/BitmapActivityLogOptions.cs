using System.Numerics;

namespace BlockMirror.Core.State;

/// <summary>
/// The activity log of persistent bitmaps (DRBD's <c>al-extents</c>): what the journal records on the
/// write path is coarse extents, not granules, and a bounded set of them stays hot, so a working set
/// costs no journal write at all. See <see cref="BitmapActivity"/> for the argument that no
/// acknowledged granule is lost and for the bound on what a crash adds.
/// </summary>
public sealed class BitmapActivityLogOptions
{
    /// <summary>4 MiB, DRBD's extent: a random-write working set of a few GiB stays hot in 1024 of them.</summary>
    public const long DefaultExtentBytes = 4L << 20;

    /// <summary>1024 extents: 4 GiB of hot working set per persistent bitmap with the default extent.</summary>
    public const int DefaultHotExtents = 1024;

    /// <summary>
    /// Bytes of an extent (a power of two, at least 512). A bitmap whose granularity is larger uses
    /// extents of one granule. Larger extents: fewer journal writes, a larger superset after a crash.
    /// </summary>
    public long ExtentBytes { get; set; } = DefaultExtentBytes;

    /// <summary>
    /// Extents a persistent bitmap keeps hot (at least 1). A write into a hot extent costs no journal
    /// write; after a crash at most this many extents per bitmap are marked beyond what was written.
    /// </summary>
    public int HotExtents { get; set; } = DefaultHotExtents;

    /// <summary>The problem with these values, or null when they are valid.</summary>
    public string? Problem() =>
        ExtentBytes < 512 || !BitOperations.IsPow2(ExtentBytes) ? "the extent size must be a power of two of at least 512 bytes"
        : HotExtents < 1 ? "at least one extent must be allowed to be hot"
        : null;
}
