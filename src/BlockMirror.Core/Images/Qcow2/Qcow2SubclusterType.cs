namespace BlockMirror.Core.Images.Qcow2;

/// <summary>What one subcluster (the whole cluster without extended L2 entries) is, as QEMU's QCow2SubclusterType.</summary>
internal enum Qcow2SubclusterType
{
    /// <summary>Data at the host offset.</summary>
    Normal,
    /// <summary>The whole cluster is compressed data.</summary>
    Compressed,
    /// <summary>Reads as zeroes; no host cluster.</summary>
    ZeroPlain,
    /// <summary>Reads as zeroes; a host cluster is kept (preallocated).</summary>
    ZeroAlloc,
    /// <summary>Not in this layer (reads from the backing file, or zeroes without one); no host cluster.</summary>
    UnallocatedPlain,
    /// <summary>Not in this layer, but its cluster has a host cluster (extended L2: another subcluster uses it).</summary>
    UnallocatedAlloc,
    /// <summary>Contradictory bits: the image is corrupt.</summary>
    Invalid,
}
