namespace BlockMirror.Core.Images.Qcow2;

/// <summary>Decoding of L2 entries (QEMU's qcow2_get_cluster_type / qcow2_get_subcluster_type).</summary>
internal static class Qcow2Entries
{
    public static long HostOffset(ulong entry) => (long)(entry & Qcow2Format.L2OffsetMask);

    public static bool IsCompressed(ulong entry) => (entry & Qcow2Format.FlagCompressed) != 0;

    public static bool IsCopied(ulong entry) => (entry & Qcow2Format.FlagCopied) != 0;

    /// <summary>True when the entry holds a host cluster of its own (not compressed): normal or preallocated.</summary>
    public static bool HasHostCluster(ulong entry) => !IsCompressed(entry) && HostOffset(entry) != 0;

    /// <summary>The type of subcluster <paramref name="sc"/> of the cluster with this entry (and bitmap, with extended L2).</summary>
    public static Qcow2SubclusterType Classify(Qcow2Geometry g, ulong entry, ulong bitmap, int sc)
    {
        if (IsCompressed(entry))
            return Qcow2SubclusterType.Compressed;
        var host = HostOffset(entry) != 0;
        if (!g.ExtendedL2)
        {
            if ((entry & Qcow2Format.FlagZero) != 0)
                return host ? Qcow2SubclusterType.ZeroAlloc : Qcow2SubclusterType.ZeroPlain;
            return host ? Qcow2SubclusterType.Normal : Qcow2SubclusterType.UnallocatedPlain;
        }
        if (host)
        {
            if (((bitmap >> 32) & bitmap) != 0)
                return Qcow2SubclusterType.Invalid;
            if ((bitmap & (1UL << (32 + sc))) != 0)
                return Qcow2SubclusterType.ZeroAlloc;
            return (bitmap & (1UL << sc)) != 0 ? Qcow2SubclusterType.Normal : Qcow2SubclusterType.UnallocatedAlloc;
        }
        if ((bitmap & Qcow2Format.BitmapAllAllocated) != 0)
            return Qcow2SubclusterType.Invalid;
        return (bitmap & (1UL << (32 + sc))) != 0 ? Qcow2SubclusterType.ZeroPlain : Qcow2SubclusterType.UnallocatedPlain;
    }

    /// <summary>The allocation bits of subclusters [<paramref name="first"/>, <paramref name="end"/>).</summary>
    public static ulong AllocRange(int first, int end) => end - first == 32 ? Qcow2Format.BitmapAllAllocated : ((1UL << (end - first)) - 1) << first;

    /// <summary>The "reads as zeroes" bits of subclusters [<paramref name="first"/>, <paramref name="end"/>).</summary>
    public static ulong ZeroRange(int first, int end) => AllocRange(first, end) << 32;

    public static bool ReadsAsZero(Qcow2SubclusterType t) => t is Qcow2SubclusterType.ZeroPlain or Qcow2SubclusterType.ZeroAlloc;

    public static bool IsUnallocated(Qcow2SubclusterType t) => t is Qcow2SubclusterType.UnallocatedPlain or Qcow2SubclusterType.UnallocatedAlloc;
}
