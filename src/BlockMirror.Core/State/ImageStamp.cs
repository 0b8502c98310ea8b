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
    /// must not inherit the old file's checkpoint. A host device is stamped by its device node the same
    /// way: writes through the node move the node's mtime (seen on Linux 6.18, and what the restart
    /// and kill -9 tests on loop devices rely on), st_size is 0 (the node's size is checked against
    /// the device's own), and a node made anew (a volume removed and created again, or a reboot, which
    /// rebuilds devtmpfs) has a new mtime, so its bitmaps come back inconsistent rather than trusted
    /// for a device whose history nobody saw. Writes to the device by another name (its partition's
    /// or dm table's) do not move this node's mtime: like QEMU, nothing here can see them.
    /// </summary>
    public static ImageStamp? Of(IBlockImage image) => image switch
    {
        HostDeviceImage device when device.TryStat() is { } st => Of(st),
        _ when ImageHostFile.Of(image) is { } file && file.TryStat() is { } st => Of(st),
        _ => null,
    };

    internal static ImageStamp Of(in StatBuffer st)
    {
        // Ticks are 100 ns: the same truncation File.GetLastWriteTimeUtc applies, so stamps stored by either compare equal.
        var modified = DateTime.UnixEpoch.AddTicks(st.ModifiedSeconds * TimeSpan.TicksPerSecond + st.ModifiedNanoseconds / 100);
        return new ImageStamp(st.Size, unchecked((long)st.Inode), modified);
    }
}
