namespace BlockMirror.Core.Bitmaps;

/// <summary>
/// Which conditions <see cref="DirtyBitmap.Check"/> refuses, mirroring QEMU's
/// <c>BDRV_BITMAP_*</c> flags (values equal QEMU's so the mapping stays obvious).
/// </summary>
[Flags]
public enum BitmapCheck
{
    /// <summary>Refuse nothing.</summary>
    None = 0,

    /// <summary>Refuse a bitmap in use by a job or export.</summary>
    Busy = 1,

    /// <summary>Refuse a read-only bitmap (modifications).</summary>
    ReadOnly = 2,

    /// <summary>Refuse a bitmap left inconsistent by an unclean shutdown.</summary>
    Inconsistent = 4,

    /// <summary>Everything: clear, merge target, mirror working bitmap.</summary>
    Default = Busy | ReadOnly | Inconsistent,

    /// <summary>Read-only is fine: enable, disable, merge source, NBD export, backup.</summary>
    AllowReadOnly = Busy | Inconsistent,
}
