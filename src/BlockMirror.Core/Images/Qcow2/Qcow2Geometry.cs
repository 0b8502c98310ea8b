namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The sizes an image's header fixes: clusters, subclusters, L2 entries, refcount widths and the
/// compressed-descriptor layout (QEMU's BDRVQcow2State fields of the same names).
/// </summary>
internal sealed class Qcow2Geometry
{
    public Qcow2Geometry(int clusterBits, bool extendedL2, int refcountOrder)
    {
        if (clusterBits is < Qcow2Format.MinClusterBits or > Qcow2Format.MaxClusterBits)
            throw new ArgumentOutOfRangeException(nameof(clusterBits));
        if (refcountOrder is < 0 or > 6)
            throw new ArgumentOutOfRangeException(nameof(refcountOrder));

        ClusterBits = clusterBits;
        ClusterSize = 1 << clusterBits;
        ExtendedL2 = extendedL2;
        SubclustersPerCluster = extendedL2 ? Qcow2Format.SubclustersPerExtendedCluster : 1;
        SubclusterSize = ClusterSize / SubclustersPerCluster;
        SubclusterBits = clusterBits - (extendedL2 ? 5 : 0);
        L2EntryBytes = extendedL2 ? 16 : 8;
        L2Bits = clusterBits - (extendedL2 ? 4 : 3);
        L2Entries = 1 << L2Bits;
        RefcountOrder = refcountOrder;
        RefcountBits = 1 << refcountOrder;
        RefcountMax = RefcountBits == 64 ? ulong.MaxValue : (1UL << RefcountBits) - 1;
        RefcountBlockBits = clusterBits + 3 - refcountOrder;
        RefcountBlockEntries = 1L << RefcountBlockBits;
        CompressedSizeShift = 62 - (clusterBits - 8);
        CompressedSizeMask = (1UL << (clusterBits - 8)) - 1;
        CompressedOffsetMask = (1UL << CompressedSizeShift) - 1;
        MetadataSliceSize = Math.Min(ClusterSize, 4096);
    }

    public int ClusterBits { get; }
    public int ClusterSize { get; }
    public bool ExtendedL2 { get; }
    public int SubclustersPerCluster { get; }
    public int SubclusterSize { get; }
    public int SubclusterBits { get; }

    /// <summary>8, or 16 with extended L2 entries (entry plus subcluster bitmap).</summary>
    public int L2EntryBytes { get; }
    public int L2Bits { get; }
    public int L2Entries { get; }

    public int RefcountOrder { get; }
    public int RefcountBits { get; }
    public ulong RefcountMax { get; }
    public int RefcountBlockBits { get; }

    /// <summary>Clusters one refcount block describes.</summary>
    public long RefcountBlockEntries { get; }

    public int CompressedSizeShift { get; }
    public ulong CompressedSizeMask { get; }
    public ulong CompressedOffsetMask { get; }

    /// <summary>
    /// The unit the metadata caches hold and write: a slice of an L2 table or refcount block, as QEMU's
    /// l2-cache-entry-size. 4 KiB keeps a random read on a 2 MiB-cluster image from reading a 2 MiB table.
    /// </summary>
    public int MetadataSliceSize { get; }

    public long ClusterOf(long offset) => offset >> ClusterBits;

    public long ClusterStart(long offset) => offset & ~((long)ClusterSize - 1);

    public int OffsetInCluster(long offset) => (int)(offset & (ClusterSize - 1));

    public bool IsClusterAligned(long offset) => (offset & (ClusterSize - 1)) == 0;

    public long ClustersFor(long bytes) => (bytes + ClusterSize - 1) >> ClusterBits;

    /// <summary>L1 entries needed for a virtual disk of <paramref name="size"/> bytes.</summary>
    public long L1EntriesFor(long size) => (size + (1L << (ClusterBits + L2Bits)) - 1) >> (ClusterBits + L2Bits);

    /// <summary>Where compressed data starts and how many bytes may hold it (the last sector may be shared).</summary>
    public (long Offset, int Length) CompressedRange(ulong entry)
    {
        var offset = (long)(entry & CompressedOffsetMask);
        var sectors = (int)((entry >> CompressedSizeShift) & CompressedSizeMask) + 1;
        return (offset, sectors * Qcow2Format.CompressedSectorSize - (int)(offset & (Qcow2Format.CompressedSectorSize - 1)));
    }
}
