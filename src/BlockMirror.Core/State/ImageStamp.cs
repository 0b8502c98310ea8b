using BlockMirror.Core.Images;

namespace BlockMirror.Core.State;

/// <summary>
/// What identifies an image file's state without reading it: its size, its inode (a file replaced by
/// another, e.g. a restored copy or an rsync, has a new one) and its modification time.
/// </summary>
public readonly record struct ImageStamp(long Size, long Inode, DateTime ModifiedUtc)
{
    /// <summary>The stamp of the file at <paramref name="fullPath"/>, or null when it cannot be read.</summary>
    public static ImageStamp? Read(string fullPath) =>
        StateNative.stat(fullPath, out var st) == 0 ? Of(st) : null;

    /// <summary>
    /// The stamp of the file a raw or qcow2 image has open (fstat of its descriptor; after the image was
    /// closed, as it was then), or null for other images and when it cannot be read. Checkpoints
    /// stamp this, not the path: a file renamed over the path while the node had the old one open
    /// must not inherit the old file's checkpoint.
    /// </summary>
    public static ImageStamp? Of(IBlockImage image) =>
        ImageHostFile.Of(image) is { } file && file.TryStat() is { } st ? Of(st) : null;

    internal static ImageStamp Of(in StatBuffer st)
    {
        // Ticks are 100 ns: the same truncation File.GetLastWriteTimeUtc applies, so stamps stored by either compare equal.
        var modified = DateTime.UnixEpoch.AddTicks(st.ModifiedSeconds * TimeSpan.TicksPerSecond + st.ModifiedNanoseconds / 100);
        return new ImageStamp(st.Size, unchecked((long)st.Inode), modified);
    }
}
