namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// One entry of the bitmap directory (qcow2.txt "Bitmap directory"; QEMU's Qcow2BitmapDirEntry):
/// where the bitmap's table lies and how many entries it has, its flags, granularity and name.
/// Extra data is kept byte for byte so a rewrite of the directory loses nothing.
/// </summary>
internal sealed record Qcow2BitmapEntry(ulong TableOffset, uint TableSize, uint Flags, int GranularityBits, string Name, byte[] ExtraData)
{
    /// <summary>Set while a writer has the image open: the stored bits may be stale (QEMU then loads the bitmap inconsistent).</summary>
    public bool InUse => (Flags & Qcow2Format.BitmapFlagInUse) != 0;

    /// <summary>The bitmap records writes (QEMU's "auto": enabled).</summary>
    public bool Auto => (Flags & Qcow2Format.BitmapFlagAuto) != 0;

    public long Granularity => 1L << GranularityBits;
}
