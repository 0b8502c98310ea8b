namespace BlockMirror.Core.State;

/// <summary>
/// The durable record of a bitmap. For a persistent bitmap, <see cref="Content"/> is its last
/// checkpoint and <see cref="JournalSequence"/> the last journal entry the checkpoint covers: the
/// bitmap is the content plus every later entry of the journal (<see cref="IBitmapJournal"/>).
/// <see cref="ImageSize"/>, <see cref="ImageInode"/> and <see cref="ImageMtimeUtc"/> stamp the image
/// at that checkpoint. <see cref="InUse"/> follows QEMU's qcow2 in-use flag: set while a running
/// service owns the bitmap, cleared at a clean stop (whose checkpoint is then exact, and the image's
/// mtime must still match it). Found set at start, the stop was not clean: the journal makes the
/// content exact, unless the image was replaced or modified after the service died (BitmapPersistence.Unprovable).
/// </summary>
public sealed record BitmapRecord(
    string Node,
    string Name,
    long Granularity,
    bool Persistent,
    bool Disabled,
    bool Inconsistent,
    bool InUse,
    byte[]? Content,
    long? ImageSize,
    DateTime? ImageMtimeUtc,
    DateTime CreatedAt)
{
    /// <summary>
    /// The last journal sequence <see cref="Content"/> covers; null when no journal covered the
    /// bitmap (a store written before the journal existed, or a service without one), in which case
    /// an unclean stop leaves it unprovable.
    /// </summary>
    public long? JournalSequence { get; init; }

    /// <summary>The image file's inode at the checkpoint (raw images).</summary>
    public long? ImageInode { get; init; }

    /// <summary>Why the bitmap is <see cref="Inconsistent"/> (kept across restarts, shown as <c>inconsistentReason</c>).</summary>
    public string? InconsistentReason { get; init; }
}
