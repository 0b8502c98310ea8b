namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// One bitmap the image's directory is to hold after <see cref="Qcow2Image.StoreBitmapsAsync"/>.
/// <see cref="Content"/> is the bits in <see cref="Bitmaps.DirtyBitmap.Serialize"/>'s form (which is
/// qcow2's on-disk bit order); null keeps what the image holds for the bitmap (all clear for a new one).
/// <see cref="InUse"/> set says the stored bits are not to be trusted: the bitmap is being written, or
/// is inconsistent.
/// </summary>
public sealed record Qcow2BitmapToStore(string Name, long Granularity, bool Auto, bool InUse, byte[]? Content);
