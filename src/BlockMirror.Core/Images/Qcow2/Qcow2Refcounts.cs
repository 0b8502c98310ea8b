using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Reference counts of host clusters (QEMU's qcow2-refcount.c): the refcount table in memory, its
/// blocks through a slice cache, the cluster allocator, and growth of the table. Used only under the
/// image's metadata lock.
/// </summary>
/// <remarks>
/// Crash consistency rests on two rules. An increment may reach the disk at any time (at worst a
/// cluster leaks), so refcount slices are written back freely and the L2 cache flushes them first.
/// A decrement must not reach the disk before the L2 entry that stopped using the cluster, and the
/// cluster must not be handed out again before then either (else a crash could leave two entries, or
/// an old entry and new data, on one cluster): frees wait in <see cref="QueueFree"/> until the image
/// has written and flushed its L2 tables, then <see cref="ApplyPendingFreesAsync"/> applies them. So
/// no refcount slice ever holds a change that is unsafe to write, and no cycle between the caches
/// exists. A new refcount block or table is written and flushed before anything points to it.
/// </remarks>
internal sealed class Qcow2Refcounts
{
    private readonly IQcow2File _file;
    private readonly Qcow2Geometry _g;
    private readonly Qcow2MetadataCache _cache;
    private readonly Qcow2Header _header;
    private readonly Func<ValueTask> _syncFile;
    private readonly List<(long Offset, long Length)> _pendingFrees = [];
    private ulong[] _table;
    private long _freeHint;
    private long _end;

    public Qcow2Refcounts(IQcow2File file, Qcow2Geometry geometry, Qcow2Header header, ulong[] table, Qcow2MetadataCache cache, Func<ValueTask> syncFile)
    {
        _file = file;
        _g = geometry;
        _header = header;
        _table = table;
        _cache = cache;
        _syncFile = syncFile;
        _end = geometry.ClustersFor(file.Length);
    }

    public Qcow2MetadataCache Cache => _cache;

    public bool HasPendingFrees => _pendingFrees.Count > 0;

    public int PendingFreeCount => _pendingFrees.Count;

    /// <summary>The first cluster past everything ever used: the file's end, or past the last allocation.</summary>
    public long EndCluster => _end;

    /// <summary>Reads the refcount table of an image (entries as stored: offsets with reserved bits).</summary>
    public static ulong[] ReadTable(IQcow2File file, Qcow2Header header, Qcow2Geometry g)
    {
        var bytes = new byte[(long)header.RefcountTableClusters << g.ClusterBits];
        file.Read((long)header.RefcountTableOffset, bytes);
        var table = new ulong[bytes.Length / 8];
        for (var i = 0; i < table.Length; i++)
            table[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
        return table;
    }

    /// <summary>The refcount of host cluster <paramref name="cluster"/> (0 where no block describes it).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ulong> GetAsync(long cluster)
    {
        var (sliceOffset, index) = Locate(cluster);
        if (sliceOffset < 0)
            return 0;
        var slot = await _cache.GetAsync(sliceOffset).ConfigureAwait(false);
        try
        {
            return ReadEntry(_cache.Buffer(slot), index, _g.RefcountOrder);
        }
        finally
        {
            _cache.Release(slot);
        }
    }

    /// <summary>Adds <paramref name="delta"/> to a cluster's refcount (its block must exist); returns the new value.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ulong> AddAsync(long cluster, long delta)
    {
        var (sliceOffset, index) = Locate(cluster);
        if (sliceOffset < 0)
            throw Qcow2Errors.Corrupt(_file.Path, $"no refcount block for cluster {cluster:#x}");
        var slot = await _cache.GetAsync(sliceOffset).ConfigureAwait(false);
        try
        {
            var buffer = _cache.Buffer(slot);
            var value = ReadEntry(buffer, index, _g.RefcountOrder);
            var updated = delta >= 0 ? value + (ulong)delta : value - (ulong)-delta;
            if ((delta < 0 && (ulong)-delta > value) || (delta > 0 && (updated < value || updated > _g.RefcountMax)))
                throw Qcow2Errors.Corrupt(_file.Path, $"refcount of cluster {cluster:#x} would leave its range ({value} {delta:+#;-#})");
            WriteEntry(buffer, index, _g.RefcountOrder, updated);
            _cache.MarkDirty(slot);
            return updated;
        }
        finally
        {
            _cache.Release(slot);
        }
    }

    /// <summary>
    /// Allocates <paramref name="count"/> contiguous free clusters with refcount 1 (QEMU's
    /// qcow2_alloc_clusters) and returns the offset of the first. <paramref name="pristine"/> tells
    /// that they lie past everything the file ever held, so they read as zeroes without being written.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<(long Offset, bool Pristine)> AllocateAsync(long count)
    {
        while (true)
        {
            var start = await FindFreeAsync(count).ConfigureAwait(false);
            // Making a missing refcount block takes a cluster too, maybe one of these: start over then.
            if (await EnsureBlocksAsync(start, count).ConfigureAwait(false))
                continue;
            for (var c = start; c < start + count; c++)
                await AddAsync(c, 1).ConfigureAwait(false);
            _freeHint = start + count;
            var pristine = start >= _end;
            _end = Math.Max(_end, start + count);
            return (start << _g.ClusterBits, pristine);
        }
    }

    /// <summary>Frees a host range once the L2 entry that used it is on disk (see the remarks).</summary>
    public void QueueFree(long offset, long length) => _pendingFrees.Add((offset, length));

    /// <summary>
    /// Applies the queued frees. Call only after every L2 change that unlinked them is written and
    /// flushed. Freed clusters get their space punched out of the file (QEMU's discard passthrough).
    /// </summary>
    public async ValueTask ApplyPendingFreesAsync()
    {
        if (_pendingFrees.Count == 0)
            return;
        var frees = _pendingFrees.ToArray();
        _pendingFrees.Clear();
        foreach (var (offset, length) in frees)
            await DecrementNowAsync(offset, length).ConfigureAwait(false);
    }

    /// <summary>Decrements every cluster the host range touches, now: for clusters no L2 entry ever pointed to.</summary>
    public async ValueTask DecrementNowAsync(long offset, long length)
    {
        var first = offset >> _g.ClusterBits;
        var last = (offset + length - 1) >> _g.ClusterBits;
        var punchStart = -1L;
        for (var c = first; c <= last; c++)
        {
            var value = await AddAsync(c, -1).ConfigureAwait(false);
            if (value == 0)
            {
                _freeHint = Math.Min(_freeHint, c);
                if (punchStart < 0)
                    punchStart = c;
                continue;
            }
            if (punchStart >= 0)
            {
                await PunchAsync(punchStart, c).ConfigureAwait(false);
                punchStart = -1;
            }
        }
        if (punchStart >= 0)
            await PunchAsync(punchStart, last + 1).ConfigureAwait(false);
    }

    public ValueTask WriteDirtyAsync() => _cache.WriteDirtyAsync();

    private ValueTask PunchAsync(long firstCluster, long endCluster) =>
        _file.PunchHoleAsync(firstCluster << _g.ClusterBits, (endCluster - firstCluster) << _g.ClusterBits);

    /// <summary>The first run of <paramref name="count"/> free clusters at or after the hint.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<long> FindFreeAsync(long count)
    {
        var cluster = Math.Max(_freeHint, 1);
        var runStart = cluster;
        var run = 0L;
        while (run < count)
        {
            var t = cluster >> _g.RefcountBlockBits;
            if (t >= _table.Length || (_table[t] & Qcow2Format.RefcountTableOffsetMask) == 0)
            {
                // No block: every cluster it would describe is free.
                var take = Math.Min(((t + 1) << _g.RefcountBlockBits) - cluster, count - run);
                run += take;
                cluster += take;
                continue;
            }
            if (await GetAsync(cluster).ConfigureAwait(false) == 0)
            {
                run++;
            }
            else
            {
                run = 0;
                runStart = cluster + 1;
            }
            cluster++;
        }
        if (((runStart + count) << _g.ClusterBits) > (long)Qcow2Format.L2OffsetMask)
            throw Qcow2Errors.TooLarge(_file.Path, "the image file would grow past the largest offset qcow2 can address");
        return runStart;
    }

    /// <summary>Makes sure refcount blocks describe [start, start + count); true when it had to make one (the caller starts over).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> EnsureBlocksAsync(long start, long count)
    {
        var first = start >> _g.RefcountBlockBits;
        var last = (start + count - 1) >> _g.RefcountBlockBits;
        for (var t = first; t <= last; t++)
        {
            if (t >= _table.Length)
            {
                await GrowTableAsync(t).ConfigureAwait(false);
                return true;
            }
            if ((_table[t] & Qcow2Format.RefcountTableOffsetMask) == 0)
            {
                await CreateBlockAsync(t).ConfigureAwait(false);
                return true;
            }
        }
        return false;
    }

    /// <summary>Makes the refcount block for table index <paramref name="t"/> (QEMU's alloc_refcount_block).</summary>
    private async ValueTask CreateBlockAsync(long t)
    {
        var block = await FindFreeAsync(1).ConfigureAwait(false);
        var blockIndex = block >> _g.RefcountBlockBits;
        var content = new byte[_g.ClusterSize];
        if (blockIndex == t)
        {
            // The block describes itself: its own refcount goes in it.
            WriteEntry(content, block & (_g.RefcountBlockEntries - 1), _g.RefcountOrder, 1);
            await _file.WriteAsync(block << _g.ClusterBits, content).ConfigureAwait(false);
        }
        else if (blockIndex >= _table.Length)
        {
            await GrowTableAsync(blockIndex).ConfigureAwait(false);
            return;
        }
        else if ((_table[blockIndex] & Qcow2Format.RefcountTableOffsetMask) == 0)
        {
            await CreateBlockAsync(blockIndex).ConfigureAwait(false);
            return;
        }
        else
        {
            // Described by another block: its increment must be on disk before the table points here.
            await AddAsync(block, 1).ConfigureAwait(false);
            await _file.WriteAsync(block << _g.ClusterBits, content).ConfigureAwait(false);
            await _cache.WriteDirtyAsync().ConfigureAwait(false);
        }
        _end = Math.Max(_end, block + 1);

        // The block (and its own refcount) durable first, then the table entry, then durable again so
        // that an L2 entry written later never counts on a block the table does not reach yet.
        await _syncFile().ConfigureAwait(false);
        _table[t] = (ulong)(block << _g.ClusterBits);
        var entry = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(entry, _table[t]);
        await _file.WriteAsync((long)_header.RefcountTableOffset + (t * 8), entry).ConfigureAwait(false);
        await _syncFile().ConfigureAwait(false);
    }

    /// <summary>
    /// Replaces the refcount table by a larger one that reaches index <paramref name="needed"/> (QEMU's
    /// qcow2_refcount_area): past everything in use it lays out new refcount blocks that describe
    /// themselves and the new table, then the table (the old entries plus the new blocks), flushes,
    /// switches the header to it in one 12-byte write, flushes, and frees the old table.
    /// </summary>
    private async ValueTask GrowTableAsync(long needed)
    {
        var entries = _g.RefcountBlockEntries;
        var oldLength = _table.Length;
        var areaStart = Math.Max(oldLength * entries, _end);
        var newLength = Math.Max(needed + 1, oldLength + (oldLength / 2) + 1);
        long blocks = 0;
        long tableClusters;
        long first;
        long last;
        while (true)
        {
            tableClusters = _g.ClustersFor(newLength * 8);
            var areaEnd = areaStart + blocks + tableClusters;
            first = areaStart / entries;
            last = (areaEnd - 1) / entries;
            var neededBlocks = last - first + 1;
            var neededLength = Math.Max(newLength, last + 1);
            if (neededBlocks == blocks && neededLength == newLength)
                break;
            blocks = neededBlocks;
            newLength = neededLength;
        }
        newLength = tableClusters << (_g.ClusterBits - 3); // the whole clusters are the table
        if (newLength * 8 > Qcow2Format.MaxRefcountTableBytes)
            throw Qcow2Errors.TooLarge(_file.Path, "the refcount table would exceed QEMU's limit of 8 MiB");

        var areaEndCluster = areaStart + blocks + tableClusters;
        var content = new byte[_g.ClusterSize];
        var table = new ulong[newLength];
        Array.Copy(_table, table, oldLength);
        for (var r = first; r <= last; r++)
        {
            content.AsSpan().Clear();
            var rangeStart = r * entries;
            for (var c = Math.Max(areaStart, rangeStart); c < Math.Min(areaEndCluster, rangeStart + entries); c++)
                WriteEntry(content, c - rangeStart, _g.RefcountOrder, 1);
            var blockCluster = areaStart + (r - first);
            await _file.WriteAsync(blockCluster << _g.ClusterBits, content).ConfigureAwait(false);
            table[r] = (ulong)(blockCluster << _g.ClusterBits);
        }
        var tableOffset = (areaStart + blocks) << _g.ClusterBits;
        var tableBytes = new byte[tableClusters << _g.ClusterBits];
        for (var i = 0; i < table.Length; i++)
            BinaryPrimitives.WriteUInt64BigEndian(tableBytes.AsSpan(i * 8), table[i]);
        await _file.WriteAsync(tableOffset, tableBytes).ConfigureAwait(false);
        // Increments queued in the cache may now be written too; they are safe at any time.
        await _cache.WriteDirtyAsync().ConfigureAwait(false);
        await _syncFile().ConfigureAwait(false);

        var field = new byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(field, (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(field.AsSpan(8), (uint)tableClusters);
        await _file.WriteAsync(Qcow2Format.RefcountTableOffsetField, field).ConfigureAwait(false);
        await _syncFile().ConfigureAwait(false);

        var oldOffset = (long)_header.RefcountTableOffset;
        var oldClusters = (long)_header.RefcountTableClusters;
        _table = table;
        _header.RefcountTableOffset = (ulong)tableOffset;
        _header.RefcountTableClusters = (uint)tableClusters;
        _end = Math.Max(_end, areaEndCluster);
        // Nothing points to the old table any more (the switch is on disk): free it now.
        await DecrementNowAsync(oldOffset, oldClusters << _g.ClusterBits).ConfigureAwait(false);
    }

    /// <summary>The file offset of the cache slice holding a cluster's refcount, and the entry's index in it; -1 without a block.</summary>
    private (long SliceOffset, long Index) Locate(long cluster)
    {
        var t = cluster >> _g.RefcountBlockBits;
        if (t >= _table.Length)
            return (-1, 0);
        var block = _table[t] & Qcow2Format.RefcountTableOffsetMask;
        if (block == 0)
            return (-1, 0);
        if (!_g.IsClusterAligned((long)block))
            throw Qcow2Errors.Corrupt(_file.Path, $"Refblock offset {block:#x} unaligned (reftable index: {t:#x})");
        var index = cluster & (_g.RefcountBlockEntries - 1);
        var entriesPerSlice = (long)_g.MetadataSliceSize * 8 / _g.RefcountBits;
        var slice = index / entriesPerSlice;
        return ((long)block + (slice * _g.MetadataSliceSize), index - (slice * entriesPerSlice));
    }

    /// <summary>Reads refcount entry <paramref name="index"/> of a block (or slice) with 2^<paramref name="order"/>-bit entries.</summary>
    public static ulong ReadEntry(ReadOnlySpan<byte> block, long index, int order) => order switch
    {
        0 => (ulong)(block[(int)(index >> 3)] >> (int)(index & 7)) & 1,
        1 => (ulong)(block[(int)(index >> 2)] >> (int)(2 * (index & 3))) & 3,
        2 => (ulong)(block[(int)(index >> 1)] >> (int)(4 * (index & 1))) & 15,
        3 => block[(int)index],
        4 => BinaryPrimitives.ReadUInt16BigEndian(block[(int)(index * 2)..]),
        5 => BinaryPrimitives.ReadUInt32BigEndian(block[(int)(index * 4)..]),
        _ => BinaryPrimitives.ReadUInt64BigEndian(block[(int)(index * 8)..]),
    };

    /// <summary>Writes refcount entry <paramref name="index"/> of a block (or slice).</summary>
    public static void WriteEntry(Span<byte> block, long index, int order, ulong value)
    {
        switch (order)
        {
            case 0:
            case 1:
            case 2:
                var bits = 1 << order;
                var perByte = 8 / bits;
                var shift = (int)(index % perByte) * bits;
                var mask = (byte)(((1 << bits) - 1) << shift);
                ref var b = ref block[(int)(index / perByte)];
                b = (byte)((b & ~mask) | (((int)value << shift) & mask));
                break;
            case 3:
                block[(int)index] = (byte)value;
                break;
            case 4:
                BinaryPrimitives.WriteUInt16BigEndian(block[(int)(index * 2)..], (ushort)value);
                break;
            case 5:
                BinaryPrimitives.WriteUInt32BigEndian(block[(int)(index * 4)..], (uint)value);
                break;
            default:
                BinaryPrimitives.WriteUInt64BigEndian(block[(int)(index * 8)..], value);
                break;
        }
    }
}
