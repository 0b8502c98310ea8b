namespace BlockMirror.Core.Images;

/// <summary>
/// An image a driver opened, with how the node records where it lives: <paramref name="Path"/>
/// relative to the image root for a file (a file-backed image), <paramref name="Uri"/> for a remote one.
/// </summary>
public sealed record OpenedImage(IBlockImage Image, string? Path, string? Uri);
