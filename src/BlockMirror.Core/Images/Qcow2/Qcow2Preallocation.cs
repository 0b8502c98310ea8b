namespace BlockMirror.Core.Images.Qcow2;

/// <summary>qemu-img's preallocation modes this driver creates.</summary>
public enum Qcow2Preallocation
{
    /// <summary>Nothing but the header, refcount structures and L1 table.</summary>
    Off,
    /// <summary>Every L2 table and data cluster allocated up front (the file stays sparse).</summary>
    Metadata,
}
