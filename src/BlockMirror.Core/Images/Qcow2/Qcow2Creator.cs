using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Lays out a new image (QEMU's qcow2_co_create): the header in cluster 0, then the refcount table,
/// the refcount blocks and the L1 table — for qemu-img's default 64 KiB clusters exactly QEMU's
/// clusters 1, 2 and 3 — and, with metadata preallocation, every L2 table followed by its data clusters.
/// </summary>
internal static class Qcow2Creator
{
    /// <summary>Refuses what QEMU refuses, with its messages, before any file is touched.</summary>
    public static void Validate(Qcow2CreateOptions o, string name)
    {
        if (o.Size < 0 || o.Size % 512 != 0)
            throw BlockErrors.Invalid("invalid-size", $"Could not create '{name}': Image size must be a multiple of 512 bytes");
        if (!BitOperations.IsPow2(o.ClusterSize) || o.ClusterSize < (1 << Qcow2Format.MinClusterBits) || o.ClusterSize > (1 << Qcow2Format.MaxClusterBits))
            throw BlockErrors.Invalid("invalid-cluster-size", $"Could not create '{name}': Cluster size must be a power of two between 512 and 2048k");
        if (o.Version is not (2 or 3))
            throw Options(name, $"Unsupported qcow2 version {o.Version}");
        if (!BitOperations.IsPow2(o.RefcountBits) || o.RefcountBits > 64)
            throw Options(name, "Refcount width must be a power of two and may not exceed 64 bits");
        if (o.Version == 2)
        {
            if (o.LazyRefcounts)
                throw Options(name, "Lazy refcounts only supported with compatibility level 1.1 and above (use version 3)");
            if (o.RefcountBits != 16)
                throw Options(name, "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version 3)");
            if (o.ExtendedL2)
                throw Options(name, "Extended L2 entries are only supported with compatibility level 1.1 and above");
        }
        if (o.ExtendedL2 && o.ClusterSize < 16384)
            throw Options(name, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        if (o.BackingFormat is not null && o.BackingFile is null)
            throw Options(name, "Backing format cannot be used without backing file");
        if (o.BackingFile is { } backing && (backing.Length == 0 || Encoding.UTF8.GetByteCount(backing) > Qcow2Format.MaxBackingFileNameLength))
            throw Options(name, "Backing file name must be 1 to 1023 bytes long");
        if (o.BackingFormat is { } format && (format.Length == 0 || Encoding.UTF8.GetByteCount(format) >= 16))
            throw Options(name, "Backing format name must be 1 to 15 bytes long");
        if (o.BackingFile is not null && o.Preallocation != Qcow2Preallocation.Off && !o.ExtendedL2)
            throw Options(name, "Backing file and preallocation can only be used at the same time if extended_l2 is on");
        var g = new Qcow2Geometry(BitOperations.Log2((uint)o.ClusterSize), o.ExtendedL2, BitOperations.Log2((uint)o.RefcountBits));
        if (g.L1EntriesFor(o.Size) * 8 > Qcow2Format.MaxL1Bytes)
            throw BlockErrors.Invalid("invalid-size", $"Could not create '{name}': the image would need an L1 table larger than 32 MiB (use a larger cluster size)");
    }

    /// <summary>Writes a new image into an empty file (validated options).</summary>
    public static void Format(IQcow2File file, Qcow2CreateOptions o)
    {
        var clusterBits = BitOperations.Log2((uint)o.ClusterSize);
        var g = new Qcow2Geometry(clusterBits, o.ExtendedL2, BitOperations.Log2((uint)o.RefcountBits));
        var cs = (long)g.ClusterSize;
        var l1Entries = g.L1EntriesFor(o.Size);
        var l1Clusters = Math.Max(1, g.ClustersFor(l1Entries * 8));
        var dataClusters = g.ClustersFor(o.Size);
        var preallocated = o.Preallocation == Qcow2Preallocation.Metadata ? l1Entries + dataClusters : 0;

        // Refcount blocks must describe every cluster including themselves and the table; the table
        // must hold an entry per block. Grow both until they fit.
        long tableClusters = 1;
        long blocks = 1;
        while (true)
        {
            var total = 1 + tableClusters + blocks + l1Clusters + preallocated;
            var neededBlocks = (total + g.RefcountBlockEntries - 1) / g.RefcountBlockEntries;
            var neededTable = Math.Max(1, g.ClustersFor(neededBlocks * 8));
            if (neededBlocks <= blocks && neededTable <= tableClusters)
                break;
            blocks = Math.Max(blocks, neededBlocks);
            tableClusters = Math.Max(tableClusters, neededTable);
        }
        var tableStart = 1L;
        var blocksStart = tableStart + tableClusters;
        var l1Start = blocksStart + blocks;
        var dataStart = l1Start + l1Clusters;
        var totalClusters = dataStart + preallocated;

        var header = new Qcow2Header
        {
            Version = (uint)o.Version,
            ClusterBits = clusterBits,
            Size = (ulong)o.Size,
            L1Size = (uint)l1Entries,
            L1TableOffset = (ulong)(l1Start * cs),
            RefcountTableOffset = (ulong)(tableStart * cs),
            RefcountTableClusters = (uint)tableClusters,
            RefcountOrder = g.RefcountOrder,
            CompatibleFeatures = o.LazyRefcounts ? Qcow2Format.CompatLazyRefcounts : 0,
            IncompatibleFeatures = o.ExtendedL2 ? Qcow2Format.IncompatExtendedL2 : 0,
            BackingFile = o.BackingFile,
            BackingFormat = o.BackingFormat,
        };
        file.SetLength(totalClusters * cs);
        file.Write(0, header.Serialize(g.ClusterSize));

        var table = new byte[tableClusters * cs];
        for (var b = 0L; b < blocks; b++)
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(b * 8)), (ulong)((blocksStart + b) * cs));
        file.Write(tableStart * cs, table);

        // Every cluster of the new image is in use exactly once.
        var block = new byte[cs];
        for (var b = 0L; b < blocks; b++)
        {
            block.AsSpan().Clear();
            var first = b * g.RefcountBlockEntries;
            for (var c = first; c < Math.Min(totalClusters, first + g.RefcountBlockEntries); c++)
                Qcow2Refcounts.WriteEntry(block, c - first, g.RefcountOrder, 1);
            file.Write((blocksStart + b) * cs, block);
        }

        if (preallocated > 0)
            WritePreallocatedTables(file, g, l1Start, l1Entries, dataStart, dataClusters, o.BackingFile is not null);
    }

    /// <summary>
    /// QEMU's preallocation=metadata: each L2 table, then the data clusters it maps, all data (the file
    /// stays sparse) — over a backing file (extended L2 only) the subclusters stay unallocated so the
    /// backing still shows through.
    /// </summary>
    private static void WritePreallocatedTables(IQcow2File file, Qcow2Geometry g, long l1Start, long l1Entries, long dataStart, long dataClusters, bool backed)
    {
        var cs = (long)g.ClusterSize;
        var l1 = new byte[l1Entries * 8];
        var l2 = new byte[cs];
        var next = dataStart;
        var mapped = 0L;
        for (var i = 0L; i < l1Entries; i++)
        {
            var tableCluster = next++;
            BinaryPrimitives.WriteUInt64BigEndian(l1.AsSpan((int)(i * 8)), (ulong)(tableCluster * cs) | Qcow2Format.FlagCopied);
            l2.AsSpan().Clear();
            for (var e = 0; e < g.L2Entries && mapped < dataClusters; e++, mapped++)
            {
                var span = l2.AsSpan(e * g.L2EntryBytes);
                BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)(next++ * cs) | Qcow2Format.FlagCopied);
                if (g.ExtendedL2 && !backed)
                    BinaryPrimitives.WriteUInt64BigEndian(span[8..], Qcow2Format.BitmapAllAllocated);
            }
            file.Write(tableCluster * cs, l2);
        }
        file.Write(l1Start * cs, l1);
    }

    private static BlockException Options(string name, string message) =>
        BlockErrors.Invalid("invalid-create-options", $"Could not create '{name}': {message}");
}
