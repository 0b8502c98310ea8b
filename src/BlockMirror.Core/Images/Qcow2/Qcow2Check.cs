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
    /// Rebuilds the refcount structure of an image left dirty (QEMU's rebuild_refcount_structure, which
    /// the read-write open of a dirty lazy-refcount image runs): counts what uses each cluster, lays new
    /// refcount blocks and a new table out in the first free clusters (QEMU's alloc_clusters_imrt),
    /// writes them, flushes, and switches the header to the new table in one write.
    /// </summary>
    /// <remarks>
    /// Until that switch the old structure is the image's, so its table and blocks count as used while
    /// the new one is placed: nothing written before the switch lands on a cluster the image on disk
    /// uses, and a kill at any write leaves the image as it was (still dirty: the next open repairs it
    /// again, into the same clusters). The new counts leave the old structure out, so it is free as soon
    /// as the switch makes the new blocks the image's: nothing points to it from then on. QEMU writes it
    /// as leaked and frees it in the second pass of its check (which fixes leaks anyway); the end state
    /// is the same, without a second round of refcount writes. Reusing free clusters keeps the file from
    /// growing at every repair: the new structure takes the place a previous one left free.
    /// </remarks>
    public static void RebuildRefcounts(IQcow2File file, Qcow2Header header, Qcow2Geometry g)
    {
        var messages = new List<string>();
        var counts = new Counts();
        var errors = CountReferences(file, header, g, counts, includeRefcountStructures: false, includeBitmaps: true, messages, copiedFlags: null);
        if (errors > 0)
            throw Qcow2Errors.CorruptAtOpen(file.Path, $"Could not repair dirty image: {messages[0]}");

        // See CountReferences: clusters referenced past the end read as zeroes; the file must hold them
        // (qemu-img check counts a reference a whole cluster past the end as corruption).
        if (counts.Length > g.ClustersFor(file.Length))
            file.SetLength(counts.Length << g.ClusterBits);

        var (blocks, tableCluster, tableClusters) = PlaceRefcountStructure(counts, OldRefcountClusters(file, header, g), g, file.Path);

        var cs = (long)g.ClusterSize;
        var entries = g.RefcountBlockEntries;
        var block = new byte[cs];
        var table = new byte[tableClusters * cs];
        for (var r = 0; r < blocks.Count; r++)
        {
            if (blocks[r] == 0)
                continue;
            block.AsSpan().Clear();
            for (var i = 0L; i < entries; i++)
            {
                var c = (r * entries) + i;
                var value = (ulong)counts[c];
                if (value > g.RefcountMax)
                    throw Qcow2Errors.CorruptAtOpen(file.Path, $"Could not repair dirty image: cluster {c} is used {value} times, more than {g.RefcountBits}-bit refcounts hold");
                if (value != 0)
                    Qcow2Refcounts.WriteEntry(block, i, g.RefcountOrder, value);
            }
            file.Write(blocks[r] * cs, block);
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(r * 8), (ulong)(blocks[r] * cs));
        }
        var tableOffset = tableCluster * cs;
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

    /// <summary>The clusters of the refcount table the header names and of every block it points to (corrupt entries too: they are not ours to overwrite before the switch either).</summary>
    private static HashSet<long> OldRefcountClusters(IQcow2File file, Qcow2Header header, Qcow2Geometry g)
    {
        var first = (long)header.RefcountTableOffset >> g.ClusterBits;
        var clusters = new HashSet<long>();
        for (var c = first; c < first + header.RefcountTableClusters; c++)
            clusters.Add(c);
        foreach (var entry in Qcow2Refcounts.ReadTable(file, header, g))
        {
            var offset = (long)(entry & Qcow2Format.RefcountTableOffsetMask);
            if (offset != 0)
                clusters.Add(offset >> g.ClusterBits);
        }
        return clusters;
    }

    /// <summary>
    /// Places a refcount block for every range of clusters that holds a count and a table for them, in
    /// free clusters, and adds them to <paramref name="counts"/>. A block may land in a range no block
    /// covered yet, and a table that has to grow is placed anew: repeat until nothing changes. Returns
    /// the cluster of each block by table index (0: none) and the table's first cluster and length.
    /// </summary>
    private static (List<long> Blocks, long TableCluster, long TableClusters) PlaceRefcountStructure(Counts counts, HashSet<long> oldStructure, Qcow2Geometry g, string path)
    {
        var entries = g.RefcountBlockEntries;
        var blocks = new List<long>();
        var firstFree = 1L; // cluster 0 is the header
        var tableCluster = 0L;
        var tableClusters = 0L;
        while (true)
        {
            // A pass that places nothing leaves every range with a count covered (a placement may land
            // in a range an earlier part of the same pass found empty).
            var placed = false;
            for (var r = 0; r * entries < counts.Length; r++)
            {
                if ((r < blocks.Count && blocks[r] != 0) || !counts.AnyIn(r * entries, (r + 1) * entries))
                    continue;
                var block = AllocateFree(counts, oldStructure, 1, ref firstFree, path);
                while (blocks.Count <= r)
                    blocks.Add(0);
                blocks[r] = block;
                placed = true;
            }
            var needed = Math.Max(1, g.ClustersFor(blocks.Count * 8L));
            if (needed == tableClusters)
            {
                if (!placed)
                    return (blocks, tableCluster, tableClusters);
                continue;
            }
            if (needed << g.ClusterBits > Qcow2Format.MaxRefcountTableBytes)
                throw Qcow2Errors.TooLarge(path, "the refcount table would exceed QEMU's limit of 8 MiB");
            // Nothing is written yet: the smaller table's place is simply free again (QEMU leaks it and
            // lets its second check pass free it).
            for (var c = tableCluster; c < tableCluster + tableClusters; c++)
                counts.Add(c, -1);
            firstFree = Math.Min(firstFree, Math.Max(tableCluster, 1));
            tableCluster = AllocateFree(counts, oldStructure, needed, ref firstFree, path);
            tableClusters = needed;
        }
    }

    /// <summary>
    /// The first run of <paramref name="count"/> clusters at or after <paramref name="firstFree"/> that
    /// nothing uses, the old refcount structure included, counted as used (QEMU's alloc_clusters_imrt;
    /// past the end of the file every cluster is free). <paramref name="firstFree"/> moves to the first
    /// free cluster seen, even if the run did not fit there.
    /// </summary>
    private static long AllocateFree(Counts counts, HashSet<long> oldStructure, long count, ref long firstFree, string path)
    {
        var start = firstFree;
        var run = 0L;
        var seenFree = false;
        for (var c = firstFree; run < count; c++)
        {
            if (counts[c] != 0 || oldStructure.Contains(c))
            {
                run = 0;
                start = c + 1;
                continue;
            }
            if (!seenFree)
            {
                firstFree = c;
                seenFree = true;
            }
            run++;
        }
        if (start + count > MaxClusters)
            throw Qcow2Errors.TooLarge(path, "the image is too large to repair here; run 'qemu-img check -r all' on it");
        for (var c = start; c < start + count; c++)
            counts.Add(c, 1);
        return start;
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
    /// have grown the file. The rebuild grows the file over them (they read as zeroes: their data was
    /// never flushed).
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

        /// <summary>Whether any cluster in [<paramref name="start"/>, <paramref name="end"/>) has a count.</summary>
        public bool AnyIn(long start, long end) =>
            start < Length && _values.AsSpan((int)start, (int)(Math.Min(end, Length) - start)).IndexOfAnyExcept(0L) >= 0;

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
