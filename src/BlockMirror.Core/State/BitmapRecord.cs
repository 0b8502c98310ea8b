namespace BlockMirror.Core.State;

/// <summary>
/// The durable record of a bitmap. <see cref="InUse"/> follows QEMU's qcow2 in-use flag: set
/// while a running service owns the bitmap, cleared at a clean stop after the content was
/// written; found set at start, the content cannot be trusted and the bitmap is inconsistent.
/// <see cref="ImageSize"/>/<see cref="ImageMtimeUtc"/> are the image's at that clean stop: a
/// mismatch at start means the image changed while the service was down.
/// </summary>
public sealed record BitmapRecord(
    string Node,
    string Name,
    int Granularity,
    bool Persistent,
    bool Disabled,
    bool Inconsistent,
    bool InUse,
    byte[]? Content,
    long? ImageSize,
    DateTime? ImageMtimeUtc,
    DateTime CreatedAt);
