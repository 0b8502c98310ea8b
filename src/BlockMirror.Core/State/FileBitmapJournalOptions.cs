namespace BlockMirror.Core.State;

/// <summary>Tuning of <see cref="FileBitmapJournal"/>.</summary>
public sealed class FileBitmapJournalOptions
{
    /// <summary>
    /// Entries per segment before it is sealed and folded into the checkpoints. 16 Ki entries of
    /// ~40 bytes keep a segment near 1 MiB: a fold reads it in milliseconds, and a restart after a
    /// crash replays at most a few of them.
    /// </summary>
    public int SegmentEntries { get; set; } = 16384;

    /// <summary>How often the journal records that the service is alive (no fsync: a crash of the process keeps the page cache).</summary>
    public TimeSpan AliveInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Added to the last sign of life (beyond one interval) before an image's mtime counts as "written
    /// after the service died": covers a tick delayed by a busy machine and the kernel's coarse clock.
    /// </summary>
    public TimeSpan AliveMargin { get; set; } = TimeSpan.FromSeconds(2);
}
