namespace BlockMirror.Core.Images;

/// <summary>A contiguous range of an image with one <see cref="ExtentKind"/>.</summary>
public readonly record struct ImageExtent(long Offset, long Length, ExtentKind Kind)
{
    public long End => Offset + Length;
}
