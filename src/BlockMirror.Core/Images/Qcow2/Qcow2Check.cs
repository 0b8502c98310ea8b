using System.Buffers.Binary;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Refcount consistency of an image as QEMU's qcow2_check_refcounts sees it: every cluster the
/// header, the active L1/L2 tables, the refcount structures and the bitmaps extension use, counted and
/// compared with the stored refcounts; and the refcount rebuild that repairs an image left dirty
/// (QEMU's rebuild_refcount_structure, as <c>qemu-img check -r all</c>).
/// </summary>
internal static class Qcow2Check
{
    /// <summary>Beyond this many clusters the counts would need too much memory (256 MiB) to repair here.</summary>
    private const long MaxClusters = 64L << 20;

    /// <summary>Checks the image in <paramref name="file"/> (whose metadata must be written back) like <c>qemu-img check</c>.</summary>
    public static Qcow2CheckResult Run(IQcow2File file)
    {
        var header = ReadHeader(file);
        var g = new Qcow2Geometry(header.ClusterBits, header.ExtendedL2, header.RefcountOrder);
        if (header.SnapshotCount > 0)
            throw new NotSupportedException("Checking images with internal snapshots is not implemented");
        var messages = new List<string>();
        var corruptions = 0;
        var refs = new Counts();
        var copiedFlags = new List<(long Cluster, bool Copied, string What)>();
        corruptions += CountReferences(file, header, g, refs, includeRefcountStructures: true,
            includeBitmaps: (header.AutoclearFeatures & Qcow2Format.AutoclearBitmaps) != 0, messages, copiedFlags);

        var stored = new Counts();
        var table = Qcow2Refcounts.ReadTable(file, header, g);
        var block = new byte[g.ClusterSize];
        for (var t = 0L; t < table.Length; t++)
        {
            var offset = (long)(table[t] & Qcow2Format.RefcountTableOffsetMask);
            if (offset == 0 || !g.IsClusterAligned(offset) || offset >= file.Length)
                continue; // reported by CountReferences
            file.Read(offset, block);
            for (var i = 0L; i < g.RefcountBlockEntries; i++)
            {
                var value = Qcow2Refcounts.ReadEntry(block, i, g.RefcountOrder);
                if (value != 0)
                    stored.Add((t * g.RefcountBlockEntries) + i, (long)value);
            }
        }

        var leaks = 0;
        var n = Math.Max(refs.Length, stored.Length);
        for (var c = 0L; c < n; c++)
        {
            var r = refs[c];
            var s = stored[c];
            if (s < r)
            {
                corruptions++;
                messages.Add($"ERROR cluster {c} refcount={s} reference={r}");
            }
            else if (s > r)
            {
                leaks++;
                messages.Add($"Leaked cluster {c} refcount={s} reference={r}");
            }
        }
        foreach (var (cluster, copied, what) in copiedFlags)
        {
            if (copied != (stored[cluster] == 1))
            {
                corruptions++;
                messages.Add($"ERROR OFLAG_COPIED {what}: cluster {cluster} refcount={stored[cluster]} copied={copied}");
            }
        }
        return new Qcow2CheckResult(corruptions, leaks, messages);
    }

    /// <summary>
    /// Writes a new refcount structure for the image past everything in use (blocks, then the table),
    /// flushes, and switches the header to it in one write: until that write the old structure stays
    /// untouched, so a crash during the repair leaves the image as it was (still dirty, repaired again).
    /// </summary>
    public static void RebuildRefcounts(IQcow2File file, Qcow2Header header, Qcow2Geometry g)
    {
        var messages = new List<string>();
        var refs = new Counts();
        var errors = CountReferences(file, header, g, refs, includeRefcountStructures: false, includeBitmaps: true, messages, copiedFlags: null);
        if (errors > 0)
            throw Qcow2Errors.CorruptAtOpen(file.Path, $"Could not repair dirty image: {messages[0]}");

        var entries = g.RefcountBlockEntries;
        var areaStart = Math.Max(g.ClustersFor(file.Length), refs.Length);
        long blocks = 0;
        long tableClusters = 0;
        while (true)
        {
            var areaEnd = areaStart + blocks + tableClusters;
            var neededBlocks = (areaEnd + entries - 1) / entries;
            var neededTable = Math.Max(1, g.ClustersFor(neededBlocks * 8));
            if (neededBlocks == blocks && neededTable == tableClusters)
                break;
            blocks = neededBlocks;
            tableClusters = neededTable;
        }
        var areaEndCluster = areaStart + blocks + tableClusters;
        if (areaEndCluster > MaxClusters)
            throw Qcow2Errors.TooLarge(file.Path, "the image is too large to repair here; run 'qemu-img check -r all' on it");
        if (tableClusters << g.ClusterBits > Qcow2Format.MaxRefcountTableBytes)
            throw Qcow2Errors.TooLarge(file.Path, "the refcount table would exceed QEMU's limit of 8 MiB");

        var cs = (long)g.ClusterSize;
        var block = new byte[cs];
        var table = new byte[tableClusters * cs];
        for (var r = 0L; r < blocks; r++)
        {
            block.AsSpan().Clear();
            for (var i = 0L; i < entries; i++)
            {
                var c = (r * entries) + i;
                var value = c < areaStart ? (ulong)refs[c] : c < areaEndCluster ? 1UL : 0UL;
                if (value > g.RefcountMax)
                    throw Qcow2Errors.CorruptAtOpen(file.Path, $"Could not repair dirty image: cluster {c} is used {value} times, more than {g.RefcountBits}-bit refcounts hold");
                if (value != 0)
                    Qcow2Refcounts.WriteEntry(block, i, g.RefcountOrder, value);
            }
            file.Write((areaStart + r) * cs, block);
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(r * 8)), (ulong)((areaStart + r) * cs));
        }
        var tableOffset = (areaStart + blocks) * cs;
        file.Write(tableOffset, table);
        file.Flush();

        Span<byte> field = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(field, (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(field[8..], (uint)tableClusters);
        file.Write(Qcow2Format.RefcountTableOffsetField, field);
        file.Flush();
        header.RefcountTableOffset = (ulong)tableOffset;
        header.RefcountTableClusters = (uint)tableClusters;
    }

    private static Qcow2Header ReadHeader(IQcow2File file)
    {
        var fixedPart = new byte[Qcow2Header.FixedPartLength];
        file.Read(0, fixedPart);
        var bits = Qcow2Header.PeekClusterBits(fixedPart);
        var cluster = new byte[bits is >= Qcow2Format.MinClusterBits and <= Qcow2Format.MaxClusterBits ? 1 << bits : fixedPart.Length];
        file.Read(0, cluster);
        return Qcow2Header.Parse(cluster, file.Path);
    }

    /// <summary>Counts what uses each cluster; returns the number of entries that cannot be right (with messages).</summary>
    /// <remarks>
    /// A rebuild (<paramref name="includeRefcountStructures"/> false) accepts references past the end of
    /// the file: with lazy refcounts an L2 entry may reach the disk before the data write that would
    /// have grown the file, and the new refcount structure, written past every referenced cluster,
    /// grows it over them (they read as zeroes: their data was never flushed).
    /// </remarks>
    private static int CountReferences(IQcow2File file, Qcow2Header h, Qcow2Geometry g, Counts refs, bool includeRefcountStructures,
        bool includeBitmaps, List<string> messages, List<(long Cluster, bool Copied, string What)>? copiedFlags)
    {
        var errors = 0;
        var fileLength = file.Length;
        var cs = g.ClusterSize;

        void Use(long offset, long length, string what)
        {
            if (length <= 0)
                return;
            // The last cluster may be half-written, but a reference a whole cluster past the end is wrong.
            if (includeRefcountStructures && offset + length - fileLength >= cs)
            {
                errors++;
                messages.Add($"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {length:#x} ({what})");
                return;
            }
            for (var c = offset >> g.ClusterBits; c <= (offset + length - 1) >> g.ClusterBits; c++)
            {
                if (c >= MaxClusters)
                    throw Qcow2Errors.TooLarge(file.Path, "the image is too large to check here");
                refs.Add(c, 1);
            }
        }

        Use(0, cs, "header");
        Use((long)h.L1TableOffset, h.L1Size * 8L, "L1 table");
        var l1 = Qcow2L1Table.Read(file, (long)h.L1TableOffset, (int)h.L1Size);
        var l2 = new byte[cs];
        for (var i = 0L; i < l1.Length; i++)
        {
            var entry = l1[i];
            if (entry == 0)
                continue;
            if ((entry & Qcow2Format.L1ReservedMask) != 0)
            {
                errors++;
                messages.Add($"ERROR found L1 entry with reserved bits set: {entry:x}");
            }
            var tableOffset = (long)(entry & Qcow2Format.L1OffsetMask);
            if (tableOffset == 0)
                continue;
            if (!g.IsClusterAligned(tableOffset))
            {
                errors++;
                messages.Add($"ERROR l2_offset={tableOffset:x}: Table is not cluster aligned; L1 entry corrupted");
                continue;
            }
            Use(tableOffset, cs, "L2 table");
            copiedFlags?.Add((tableOffset >> g.ClusterBits, (entry & Qcow2Format.FlagCopied) != 0, "L2 cluster"));
            file.Read(tableOffset, l2);
            // Not "errors += CountL2(...)": that reads errors before the call, losing what Use counted in it.
            var l2Errors = CountL2(g, l2, messages, copiedFlags, Use);
            errors += l2Errors;
        }

        if (includeRefcountStructures)
        {
            Use((long)h.RefcountTableOffset, (long)h.RefcountTableClusters * cs, "refcount table");
            var table = Qcow2Refcounts.ReadTable(file, h, g);
            for (var t = 0L; t < table.Length; t++)
            {
                var block = (long)(table[t] & Qcow2Format.RefcountTableOffsetMask);
                if ((table[t] & Qcow2Format.RefcountTableReservedMask) != 0)
                {
                    errors++;
                    messages.Add($"ERROR reftable entry {t} has reserved bits set");
                }
                if (block == 0)
                    continue;
                if (!g.IsClusterAligned(block) || block >= fileLength)
                {
                    errors++;
                    messages.Add($"ERROR refcount block {t} is not cluster aligned or outside the image");
                    continue;
                }
                Use(block, cs, "refcount block");
            }
        }

        if (includeBitmaps && h.BitmapsExtension is { Length: >= 24 } ext)
        {
            var bitmapErrors = CountBitmaps(file, g, ext, messages, Use);
            errors += bitmapErrors;
        }
        return errors;
    }

    private static int CountL2(Qcow2Geometry g, byte[] l2, List<string> messages, List<(long, bool, string)>? copiedFlags, Action<long, long, string> use)
    {
        var errors = 0;
        for (var i = 0; i < g.L2Entries; i++)
        {
            var entry = BinaryPrimitives.ReadUInt64BigEndian(l2.AsSpan(i * g.L2EntryBytes));
            var bitmap = g.ExtendedL2 ? BinaryPrimitives.ReadUInt64BigEndian(l2.AsSpan((i * g.L2EntryBytes) + 8)) : 0;
            if (Qcow2Entries.IsCompressed(entry))
            {
                if (Qcow2Entries.IsCopied(entry))
                {
                    errors++;
                    messages.Add($"ERROR: coffset={entry:x}: copied flag must never be set for compressed clusters");
                }
                if (bitmap != 0)
                {
                    errors++;
                    messages.Add($"ERROR compressed cluster {entry:x} with non-zero subcluster allocation bitmap");
                }
                var (offset, length) = g.CompressedRange(entry);
                use(offset, length, "compressed cluster");
                continue;
            }
            if ((entry & Qcow2Format.L2StandardReservedMask) != 0 || (g.ExtendedL2 && (entry & Qcow2Format.FlagZero) != 0))
            {
                errors++;
                messages.Add($"ERROR found l2 entry with reserved bits set: {entry:x}");
            }
            var host = Qcow2Entries.HostOffset(entry);
            if (g.ExtendedL2 && (host != 0 ? ((bitmap >> 32) & bitmap) != 0 : (bitmap & Qcow2Format.BitmapAllAllocated) != 0))
            {
                errors++;
                messages.Add($"ERROR invalid cluster entry found (L2 entry {entry:x}, bitmap {bitmap:x})");
            }
            if (host == 0)
                continue;
            if (!g.IsClusterAligned(host))
            {
                errors++;
                messages.Add($"ERROR offset={host:x}: Data cluster is not properly aligned; L2 entry corrupted");
                continue;
            }
            use(host, g.ClusterSize, "data cluster");
            copiedFlags?.Add((host >> g.ClusterBits, Qcow2Entries.IsCopied(entry), "data cluster"));
        }
        return errors;
    }

    /// <summary>The bitmap directory, each bitmap's table and its data clusters (QEMU's qcow2_check_bitmaps_refcounts).</summary>
    private static int CountBitmaps(IQcow2File file, Qcow2Geometry g, byte[] ext, List<string> messages, Action<long, long, string> use)
    {
        var count = BinaryPrimitives.ReadUInt32BigEndian(ext);
        var directorySize = (long)BinaryPrimitives.ReadUInt64BigEndian(ext.AsSpan(8));
        var directoryOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(ext.AsSpan(16));
        if (directorySize is <= 0 or > (64L << 20) || !g.IsClusterAligned(directoryOffset))
        {
            messages.Add("ERROR bitmaps extension: invalid bitmap directory");
            return 1;
        }
        use(directoryOffset, directorySize, "bitmap directory");
        var directory = new byte[directorySize];
        file.Read(directoryOffset, directory);
        var pos = 0;
        for (var b = 0u; b < count && pos + 24 <= directory.Length; b++)
        {
            var tableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(directory.AsSpan(pos));
            var tableSize = BinaryPrimitives.ReadUInt32BigEndian(directory.AsSpan(pos + 8));
            var nameSize = BinaryPrimitives.ReadUInt16BigEndian(directory.AsSpan(pos + 18));
            var extraSize = BinaryPrimitives.ReadUInt32BigEndian(directory.AsSpan(pos + 20));
            use(tableOffset, tableSize * 8L, "bitmap table");
            var table = new byte[tableSize * 8L];
            file.Read(tableOffset, table);
            for (var i = 0; i < tableSize; i++)
            {
                var data = (long)(BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8)) & 0x00fffffffffffe00UL);
                if (data != 0)
                    use(data, g.ClusterSize, "bitmap data");
            }
            pos += (int)((24 + extraSize + nameSize + 7) & ~7u);
        }
        return 0;
    }

    /// <summary>A growable array of counts indexed by cluster.</summary>
    private sealed class Counts
    {
        private long[] _values = new long[1024];

        public long Length { get; private set; }

        public long this[long cluster] => cluster < Length ? _values[cluster] : 0;

        public void Add(long cluster, long value)
        {
            if (cluster >= _values.Length)
            {
                var size = _values.Length;
                while (size <= cluster)
                    size *= 2;
                Array.Resize(ref _values, size);
            }
            _values[cluster] += value;
            Length = Math.Max(Length, cluster + 1);
        }
    }
}
