namespace BlockMirror.Api.Data;

/// <summary>
/// Row of table <c>bitmaps</c>. For a persistent bitmap, <see cref="Content"/> is its last checkpoint,
/// <see cref="JournalSeq"/> the last bitmap-journal entry it covers, and the Image* columns stamp the
/// image at that checkpoint (see BitmapRecord).
/// </summary>
public sealed class BitmapEntity
{
    public required string Node { get; set; }
    public required string Name { get; set; }
    public long Granularity { get; set; }
    public bool Persistent { get; set; }
    public bool Disabled { get; set; }
    public bool Inconsistent { get; set; }
    public string? InconsistentReason { get; set; }
    public bool InUse { get; set; }
    public byte[]? Content { get; set; }
    public long? ImageSize { get; set; }
    public DateTime? ImageMtimeUtc { get; set; }
    public long? ImageInode { get; set; }
    public long? JournalSeq { get; set; }
    public DateTime CreatedAt { get; set; }
}
