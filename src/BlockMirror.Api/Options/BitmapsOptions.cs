using BlockMirror.Core.State;

namespace BlockMirror.Api.Options;

/// <summary>
/// Persistent bitmaps' activity log (<c>Bitmaps</c> section, see <see cref="BitmapActivityLogOptions"/>):
/// the journal records extents of <see cref="ActivityLogExtentBytes"/>, and a write into one of the
/// <see cref="ActivityLogHotExtents"/> hot extents of a bitmap costs no journal write. After a crash a
/// bitmap holds every granule a write touched plus at most hot extents × extent bytes more.
/// </summary>
public sealed class BitmapsOptions
{
    public const string Section = "Bitmaps";

    /// <summary>Bytes of an activity-log extent: a power of two, at least 512 (4 MiB, DRBD's).</summary>
    public long ActivityLogExtentBytes { get; set; } = BitmapActivityLogOptions.DefaultExtentBytes;

    /// <summary>Extents each persistent bitmap keeps hot (1024: 4 GiB of working set with 4 MiB extents).</summary>
    public int ActivityLogHotExtents { get; set; } = BitmapActivityLogOptions.DefaultHotExtents;

    public BitmapActivityLogOptions ToActivityLog() => new() { ExtentBytes = ActivityLogExtentBytes, HotExtents = ActivityLogHotExtents };
}
