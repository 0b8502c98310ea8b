namespace BlockMirror.Api.Options;

/// <summary>Where images live (<c>Storage</c> section).</summary>
public sealed class StorageOptions
{
    public const string Section = "Storage";

    /// <summary>The image root; every node path is relative to it. Relative values resolve against the content root.</summary>
    public string Root { get; set; } = "./data/images";

    /// <summary>Largest body accepted by PUT /nodes/{node}/data, in bytes.</summary>
    public long MaxDataBodyBytes { get; set; } = 64L << 20;

    /// <summary>
    /// Whether an image file with more than one hard link may be opened. Off by default: a hard link
    /// inside the root to a file outside it would pass every path check (refused with <c>image-hard-linked</c>).
    /// </summary>
    public bool AllowHardLinks { get; set; }

    /// <summary>
    /// Host block devices a raw node may name by absolute path: paths or glob patterns
    /// (<c>/dev/vg0/*</c>, <c>/dev/disk/by-id/wwn-*</c>). Empty by default: no device at all. Both the
    /// path as given and the device it leads to (symbolic links followed) must match; anything
    /// else is refused with <c>device-not-allowed</c>.
    /// </summary>
    public List<string> Devices { get; set; } = [];

    /// <summary>
    /// How often every node's open image is compared with the file at its path (a file renamed over
    /// it, removed, or a directory on the path swapped for a symlink out of the root); zero = only at
    /// control operations and checkpoints.
    /// </summary>
    public TimeSpan ImageCheckInterval { get; set; } = TimeSpan.FromSeconds(2);
}
