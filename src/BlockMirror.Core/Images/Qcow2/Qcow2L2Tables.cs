using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The guest-to-host mapping: the L1 table and the L2 tables through their slice cache (QEMU's
/// qcow2-cluster.c get_cluster_table / l2_allocate). Used only under the image's metadata lock.
/// </summary>
internal sealed class Qcow2L2Tables
{
    private readonly Qcow2Geometry _g;
    private readonly IQcow2File _file;
    private readonly Qcow2L1Table _l1;
    private readonly Qcow2MetadataCache _cache;
    private readonly Func<Qcow2Refcounts> _refcounts;
    private readonly Action _metadataWritten;

    /// <param name="metadataWritten">Told when a table is written outside the cache (it must be flushed before the L1 points to it).</param>
    public Qcow2L2Tables(Qcow2Geometry geometry, IQcow2File file, Qcow2L1Table l1, Qcow2MetadataCache cache, Func<Qcow2Refcounts> refcounts, Action metadataWritten)
    {
        _metadataWritten = metadataWritten;
        _g = geometry;
        _file = file;
        _l1 = l1;
        _cache = cache;
        _refcounts = refcounts;
        EntriesPerSlice = cache.SliceSize / geometry.L2EntryBytes;
    }

    public int EntriesPerSlice { get; }

    public Qcow2L1Table L1 => _l1;

    public Qcow2MetadataCache Cache => _cache;

    /// <summary>
    /// The slice holding guest cluster <paramref name="guestCluster"/>'s entry, pinned (release it with
    /// <see cref="Release"/>). Without an L2 table the slot is -1 and the count spans the rest of that
    /// table's range; with <paramref name="allocate"/> a missing table is made first (zeroes on disk,
    /// the L1 entry changed in memory and written back after the table).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Qcow2L2Slice> GetAsync(long guestCluster, bool allocate)
    {
        var l1Index = guestCluster >> _g.L2Bits;
        var l2Index = (int)(guestCluster & (_g.L2Entries - 1));
        var l1Entry = _l1[l1Index];
        var tableOffset = (long)(l1Entry & Qcow2Format.L1OffsetMask);
        if (tableOffset == 0)
        {
            if (!allocate)
                return new Qcow2L2Slice(-1, 0, _g.L2Entries - l2Index);
            tableOffset = await AllocateTableAsync(l1Index).ConfigureAwait(false);
        }
        else
        {
            if (!_g.IsClusterAligned(tableOffset))
                throw Qcow2Errors.Corrupt(_file.Path, $"L2 table offset {tableOffset:#x} unaligned (L1 index: {l1Index:#x})");
            if (allocate && (l1Entry & Qcow2Format.FlagCopied) == 0)
                await ClaimSharedTableAsync(l1Index, tableOffset).ConfigureAwait(false);
        }

        var byteInTable = (long)l2Index * _g.L2EntryBytes;
        var sliceStart = byteInTable / _cache.SliceSize * _cache.SliceSize;
        var slot = await _cache.GetAsync(tableOffset + sliceStart).ConfigureAwait(false);
        var index = (int)((byteInTable - sliceStart) / _g.L2EntryBytes);
        return new Qcow2L2Slice(slot, index, EntriesPerSlice - index);
    }

    /// <summary>
    /// The slice holding guest cluster <paramref name="guestCluster"/>'s entry when its table exists and
    /// the slice is cached, pinned; false (nothing pinned) when that would need I/O or a check that may fail.
    /// </summary>
    public bool TryGetCached(long guestCluster, out Qcow2L2Slice slice)
    {
        slice = default;
        var l2Index = (int)(guestCluster & (_g.L2Entries - 1));
        var tableOffset = (long)(_l1[guestCluster >> _g.L2Bits] & Qcow2Format.L1OffsetMask);
        if (tableOffset == 0 || !_g.IsClusterAligned(tableOffset))
            return false;
        var byteInTable = (long)l2Index * _g.L2EntryBytes;
        var sliceStart = byteInTable / _cache.SliceSize * _cache.SliceSize;
        if (!_cache.TryGetCached(tableOffset + sliceStart, out var slot))
            return false;
        var index = (int)((byteInTable - sliceStart) / _g.L2EntryBytes);
        slice = new Qcow2L2Slice(slot, index, EntriesPerSlice - index);
        return true;
    }

    public void Release(Qcow2L2Slice slice)
    {
        if (slice.Slot >= 0)
            _cache.Release(slice.Slot);
    }

    public ulong Entry(Qcow2L2Slice slice, int index) =>
        BinaryPrimitives.ReadUInt64BigEndian(_cache.Buffer(slice.Slot).AsSpan(index * _g.L2EntryBytes));

    public ulong Bitmap(Qcow2L2Slice slice, int index) =>
        _g.ExtendedL2 ? BinaryPrimitives.ReadUInt64BigEndian(_cache.Buffer(slice.Slot).AsSpan((index * _g.L2EntryBytes) + 8)) : 0;

    public void Set(Qcow2L2Slice slice, int index, ulong entry, ulong bitmap)
    {
        var span = _cache.Buffer(slice.Slot).AsSpan(index * _g.L2EntryBytes);
        BinaryPrimitives.WriteUInt64BigEndian(span, entry);
        if (_g.ExtendedL2)
            BinaryPrimitives.WriteUInt64BigEndian(span[8..], bitmap);
        _cache.MarkDirty(slice.Slot);
    }

    private async ValueTask<long> AllocateTableAsync(long l1Index)
    {
        var (offset, pristine) = await _refcounts().AllocateAsync(1).ConfigureAwait(false);
        // A reused cluster may hold anything; one past the old end of the file reads as zeroes already.
        if (!pristine)
        {
            await _file.WriteAsync(offset, new byte[_g.ClusterSize]).ConfigureAwait(false);
            _metadataWritten();
        }
        // Only in memory: the L1 entry is written after the table (and its refcount) are on disk.
        _l1.Set(l1Index, (ulong)offset | Qcow2Format.FlagCopied);
        return offset;
    }

    /// <summary>
    /// An L1 entry without the copied flag means the table may be shared (internal snapshots, which are
    /// refused read-write) or the flag was lost: with a refcount of one the flag is set again, else the
    /// table cannot be written here.
    /// </summary>
    private async ValueTask ClaimSharedTableAsync(long l1Index, long tableOffset)
    {
        var refcount = await _refcounts().GetAsync(tableOffset >> _g.ClusterBits).ConfigureAwait(false);
        if (refcount != 1)
            throw Qcow2Errors.Corrupt(_file.Path, $"L2 table at {tableOffset:#x} is shared (refcount {refcount}); copy-on-write of L2 tables is not supported");
        _l1.Set(l1Index, (ulong)tableOffset | Qcow2Format.FlagCopied);
    }
}
