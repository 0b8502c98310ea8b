namespace BlockMirror.Api.Data;

/// <summary>Row of table <c>bitmaps</c>; content only for persistent bitmaps, written at a clean stop.</summary>
public sealed class BitmapEntity
{
    public required string Node { get; set; }
    public required string Name { get; set; }
    public int Granularity { get; set; }
    public bool Persistent { get; set; }
    public bool Disabled { get; set; }
    public bool Inconsistent { get; set; }
    public bool InUse { get; set; }
    public byte[]? Content { get; set; }
    public long? ImageSize { get; set; }
    public DateTime? ImageMtimeUtc { get; set; }
    public DateTime CreatedAt { get; set; }
}
