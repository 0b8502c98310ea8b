namespace BlockMirror.Core.Images.Qcow2;

/// <summary>One entry of the feature name table: which bitmap (0 incompatible, 1 compatible, 2 autoclear), which bit, its name.</summary>
internal readonly record struct Qcow2FeatureName(byte Type, byte Bit, string Name)
{
    /// <summary>The table QEMU writes into every version 3 image it creates (qcow2_update_header).</summary>
    internal static readonly Qcow2FeatureName[] QemuTable =
    [
        new(0, 0, "dirty bit"),
        new(0, 1, "corrupt bit"),
        new(0, 2, "external data file"),
        new(0, 3, "compression type"),
        new(0, 4, "extended L2 entries"),
        new(1, 0, "lazy refcounts"),
        new(2, 0, "bitmaps"),
        new(2, 1, "raw external data"),
    ];
}
