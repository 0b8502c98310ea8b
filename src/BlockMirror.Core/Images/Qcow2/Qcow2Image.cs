using System.Buffers;
using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// A qcow2 image (QEMU's block/qcow2*.c): versions 2 and 3, cluster sizes 512 B to 2 MiB, any
/// refcount width, zero clusters, compressed clusters (zlib; zstd through the system's libzstd),
/// extended L2 entries (subclusters), lazy refcounts and the dirty bit, over an optional backing
/// image that unallocated ranges read through to.
/// </summary>
/// <remarks>
/// <para>Concurrency. Metadata (L1, L2 slice cache, refcounts, allocator) is guarded by one async
/// lock held only for lookups and metadata I/O, never for data I/O, as QEMU's s->lock. Guest
/// clusters are locked in ranges (<see cref="Qcow2RangeLocks"/>): reads and in-place writes share,
/// anything that changes a cluster's mapping holds it alone, so allocations of one cluster never
/// race and no request uses a host cluster being replaced. Lock order: cluster range, then metadata.</para>
/// <para>Crash consistency (what a kill -9 or power cut can leave): a write of new clusters raises
/// their refcounts (in the cache), writes the data, then changes the L2 entry (in the cache). Dirty
/// refcount slices may be written at any time; before any L2 slice is written, refcounts and the data
/// of newly linked clusters are made durable; the L1 table is written only after its L2 tables are;
/// clusters an L2 entry stopped using are freed only after that L2 change is durable. So the image on
/// disk never references a cluster with a refcount of zero, and at worst leaks clusters. With lazy
/// refcounts the image is marked dirty first instead, and repaired at the next read-write open.</para>
/// <para>Not supported: writing to images with internal snapshots (read-only is fine), encryption,
/// external data files, writing compressed clusters, resizing.</para>
/// </remarks>
public sealed partial class Qcow2Image : ILayeredImage, IMetadataCachingImage, IInlineIo
{
    /// <summary>Frees waiting for an L2 write-back before one is forced (bounds memory between flushes).</summary>
    private const int MaxPendingFrees = 4096;

    private const long MaxL2CacheBytes = 32L << 20;
    private const long MaxRefcountCacheBytes = 4L << 20;

    private static readonly byte[] s_oneZero = new byte[1];

    private readonly IQcow2File _file;
    private readonly Qcow2Header _header;
    private readonly Qcow2Geometry _g;
    private readonly Qcow2L1Table _l1;
    private readonly Qcow2MetadataCache _l2Cache;
    private readonly Qcow2L2Tables _l2;
    private readonly Qcow2Refcounts? _refcounts;
    private readonly SemaphoreSlim _meta = new(1, 1);
    private readonly Qcow2RangeLocks _ranges = new();
    private readonly bool _lazyRefcounts;
    private readonly Lock _compressedLock = new();
    private IBlockImage? _backing;
    private IAsyncDisposable? _backingLease;
    private ulong _cachedCompressedEntry;
    private byte[]? _cachedCompressedCluster;
    private bool _dirtyOnDisk;
    private bool _linkedSinceSync;
    private bool _metadataWrittenSinceSync;
    private long _ownMetadataWrites;
    private volatile bool _corrupt;
    private volatile bool _metadataWriteThrough;
    private int _disposed;

    private Qcow2Image(IQcow2File file, Qcow2Header header, Qcow2Geometry geometry, Qcow2L1Table l1, bool readOnly, IBlockImage? backing)
    {
        _file = file;
        _header = header;
        _g = geometry;
        _l1 = l1;
        ReadOnly = readOnly;
        _backing = backing;
        // QEMU counts the virtual size in sectors: a size that is not a multiple of 512 loses its tail.
        Size = (long)(header.Size / 512 * 512);
        _lazyRefcounts = header.Version >= 3 && header.LazyRefcounts;

        var slice = geometry.MetadataSliceSize;
        var l2Bytes = Math.Min(MaxL2CacheBytes, Math.Max(1, (long)l1.Length) * geometry.ClusterSize);
        _l2Cache = new Qcow2MetadataCache(file, slice, (int)Math.Max(16, l2Bytes / slice));
        if (!readOnly)
        {
            var table = Qcow2Refcounts.ReadTable(file, header, geometry);
            var refBytes = Math.Min(MaxRefcountCacheBytes, (long)table.Length * geometry.ClusterSize);
            var refCache = new Qcow2MetadataCache(file, slice, (int)Math.Max(16, refBytes / slice));
            _refcounts = new Qcow2Refcounts(file, geometry, header, table, refCache, FileSyncAsync);
            _l2Cache.BeforeWriteback = BeforeL2WritebackAsync;
        }
        _l2 = new Qcow2L2Tables(geometry, file, l1, _l2Cache, () => Refcounts, MetadataWritten);
    }

    /// <inheritdoc />
    public long Size { get; }

    /// <inheritdoc />
    public bool ReadOnly { get; }

    /// <inheritdoc />
    public string Location => _file.Path;

    /// <inheritdoc />
    /// <remarks>A new image without a backing image reads as zeroes; one over a backing image reads as the backing.</remarks>
    public bool HasZeroInit => Volatile.Read(ref _backing) is null;

    /// <inheritdoc />
    public long AllocatedBytes => _file.AllocatedBytes;

    /// <inheritdoc />
    public string Format => "qcow2";

    /// <summary>The file the image lives in (its stat identifies the image, as a raw image's does).</summary>
    internal RawFileImage? HostFile => (_file as Qcow2HostFile)?.Raw;

    public int ClusterSize => _g.ClusterSize;

    /// <summary>2 (compat 0.10) or 3 (compat 1.1).</summary>
    public int Version => (int)_header.Version;

    /// <summary>The backing file name stored in the image (QEMU resolves a relative one against the image's directory), or null.</summary>
    public string? BackingFileName => _header.BackingFile;

    /// <summary>The backing format stored in the image ("raw", "qcow2"), or null when the image does not say.</summary>
    public string? BackingFormat => _header.BackingFormat;

    /// <summary>The image reads through to this where it holds nothing; null reads zeroes there.</summary>
    public IBlockImage? Backing => Volatile.Read(ref _backing);

    public bool ExtendedL2 => _g.ExtendedL2;

    public bool LazyRefcounts => _lazyRefcounts;

    public int RefcountBits => _g.RefcountBits;

    /// <summary>"zlib" or "zstd".</summary>
    public string CompressionType => _header.CompressionType == Qcow2Format.CompressionZstd ? "zstd" : "zlib";

    /// <summary>Internal snapshots in the image (they make it read-only here).</summary>
    public int SnapshotCount => (int)_header.SnapshotCount;

    private Qcow2Refcounts Refcounts => _refcounts ?? throw new InvalidOperationException($"Image '{Location}' is open read-only");

    /// <summary>
    /// Opens an existing qcow2 image, locked as QEMU locks it. <paramref name="backing"/> is what
    /// unallocated ranges read through to: the opener resolves <see cref="BackingFileName"/> /
    /// <see cref="BackingFormat"/> and passes the backing image (opened read-only), here or later with
    /// <see cref="SetBacking"/>; without one they read as zeroes. The image does not own its backing
    /// image (a chain may be shared): dispose that after this one. Read-write opening repairs an image
    /// left dirty (refcounts rebuilt, as <c>qemu-img check -r all</c>) and clears autoclear feature bits
    /// it does not maintain. Throws what <see cref="RawFileImage.Open"/> throws, and
    /// <see cref="BlockException"/> <c>image-not-qcow2</c>, <c>image-feature-unsupported</c> (with the
    /// feature's name), <c>image-corrupt</c>, <c>image-too-large</c>.
    /// </summary>
    /// <param name="displayPath">How messages name the image (the client's relative path); the full path when null.</param>
    public static Qcow2Image Open(string path, bool readOnly, IBlockImage? backing = null, string? displayPath = null, bool allowHardLinks = true)
    {
        var raw = RawFileImage.Open(path, readOnly, displayPath, allowHardLinks);
        var file = new Qcow2HostFile(raw);
        try
        {
            return OpenOn(file, readOnly, backing, displayPath ?? path);
        }
        catch
        {
            raw.DisposeAsync().AsTask().GetAwaiter().GetResult(); // completes synchronously
            throw;
        }
    }

    /// <summary>
    /// Creates a qcow2 image as <c>qemu-img create -f qcow2 [-b backingPath -F backingFormat] path size</c>
    /// (version 3, 16-bit refcounts) and opens it read-write. <paramref name="backingPath"/> is stored
    /// as given; <paramref name="backing"/> is the opened backing image, if any.
    /// </summary>
    public static Qcow2Image Create(string path, long size, int clusterSize = 65536, string? backingPath = null, string? backingFormat = null,
        IBlockImage? backing = null, string? displayPath = null) =>
        Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize, BackingFile = backingPath, BackingFormat = backingFormat }, backing, displayPath);

    /// <summary>
    /// Creates a qcow2 image with the given options and opens it read-write. Throws
    /// <see cref="BlockException"/> (<c>invalid-size</c>, <c>invalid-cluster-size</c>,
    /// <c>invalid-create-options</c>) before touching the file system, and <see cref="IOException"/>
    /// (HResult EEXIST) when the file exists; a half-made image is removed.
    /// </summary>
    public static Qcow2Image Create(string path, Qcow2CreateOptions options, IBlockImage? backing = null, string? displayPath = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var name = displayPath ?? path;
        Qcow2Creator.Validate(options, name);
        var raw = RawFileImage.Create(path, 0, displayPath);
        var file = new Qcow2HostFile(raw);
        try
        {
            Qcow2Creator.Format(file, options);
            file.Flush();
            return OpenOn(file, readOnly: false, backing, name);
        }
        catch
        {
            raw.DisposeAsync().AsTask().GetAwaiter().GetResult();
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
                // Best effort: the original exception is what the caller needs.
            }
            catch (UnauthorizedAccessException)
            {
            }
            throw;
        }
    }

    /// <summary>Opens an image on an already open file (which it then owns), with QEMU's open-time checks and repairs.</summary>
    internal static Qcow2Image OpenOn(IQcow2File file, bool readOnly, IBlockImage? backing, string name)
    {
        var fixedPart = new byte[Qcow2Header.FixedPartLength];
        file.Read(0, fixedPart);
        if (BinaryPrimitives.ReadUInt32BigEndian(fixedPart) != Qcow2Format.Magic)
            throw Qcow2Errors.NotQcow2(name);
        var clusterBits = Qcow2Header.PeekClusterBits(fixedPart);
        var firstCluster = new byte[clusterBits is >= Qcow2Format.MinClusterBits and <= Qcow2Format.MaxClusterBits ? 1 << clusterBits : fixedPart.Length];
        file.Read(0, firstCluster);
        var header = Qcow2Header.Parse(firstCluster, name);
        var geometry = Validate(header, readOnly, name);

        if (!readOnly)
        {
            // An autoclear bit vouches for data this driver does not keep up to date: clear it before
            // the first write (qcow2.txt; QEMU's qcow2_do_open does the same for bits it does not know).
            if ((header.AutoclearFeatures & ~Qcow2Format.SupportedAutoclear) != 0)
            {
                header.AutoclearFeatures &= Qcow2Format.SupportedAutoclear;
                WriteFeatureField(file, Qcow2Format.AutoclearFeaturesField, header.AutoclearFeatures);
                file.Flush();
            }
            if (header.IsDirty)
            {
                // Refcounts may be stale (a crash with lazy refcounts): rebuild them before any allocation.
                Qcow2Check.RebuildRefcounts(file, header, geometry);
                header.IncompatibleFeatures &= ~Qcow2Format.IncompatDirty;
                WriteFeatureField(file, Qcow2Format.IncompatibleFeaturesField, header.IncompatibleFeatures);
                file.Flush();
            }
        }
        var l1 = Qcow2L1Table.Read(file, (long)header.L1TableOffset, (int)header.L1Size);
        var image = new Qcow2Image(file, header, geometry, l1, readOnly, backing);
        image.LoadBitmapsAtOpen(name);
        return image;
    }

    /// <summary>Attaches (or detaches, with null) the image unallocated ranges read through to.</summary>
    public void SetBacking(IBlockImage? backing) => Volatile.Write(ref _backing, backing);

    /// <summary>
    /// Attaches a backing image this image holds a share of (a chain opened by the driver, possibly
    /// shared with other images): <paramref name="lease"/> is released when this image is disposed,
    /// after its own file is closed.
    /// </summary>
    internal void SetBacking(IBlockImage backing, IAsyncDisposable lease)
    {
        _backingLease = lease;
        SetBacking(backing);
    }

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        cancellationToken.ThrowIfCancellationRequested();
        return buffer.Length == 0 ? ValueTask.CompletedTask : ReadCoreAsync(offset, buffer);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadCoreAsync(long offset, Memory<byte> buffer)
    {
        var held = await _ranges.AcquireAsync(_g.ClusterOf(offset), _g.ClusterOf(offset + buffer.Length - 1) + 1, exclusive: false).ConfigureAwait(false);
        try
        {
            var done = 0;
            while (done < buffer.Length)
            {
                var run = await MapAsync(offset + done, buffer.Length - done).ConfigureAwait(false);
                var chunk = buffer.Slice(done, (int)run.Length);
                switch (run.Kind)
                {
                    case Qcow2RunKind.Data:
                        await _file.ReadAsync(run.HostOffset, chunk).ConfigureAwait(false);
                        break;
                    case Qcow2RunKind.Zero:
                        chunk.Span.Clear();
                        break;
                    case Qcow2RunKind.Unallocated:
                        await ReadBackingAsync(offset + done, chunk).ConfigureAwait(false);
                        break;
                    default:
                        await ReadCompressedAsync(run.Entry, offset + done, chunk).ConfigureAwait(false);
                        break;
                }
                done += chunk.Length;
            }
        }
        finally
        {
            _ranges.Release(held);
        }
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ThrowIfNotWritable();
        cancellationToken.ThrowIfCancellationRequested();
        return WriteCoreAsync(offset, data, fua);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        if (data.Length > 0)
            await WriteRangeAsync(offset, offset + data.Length, data, offset).ConfigureAwait(false);
        await WriteThroughIfAskedAsync().ConfigureAwait(false);
        // A file has no FUA: like QEMU's generic layer, flush after the write.
        if (fua)
            await FlushAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Writes [<paramref name="start"/>, <paramref name="end"/>) from <paramref name="data"/> (which
    /// starts at guest offset <paramref name="dataOffset"/>): first in place under a shared cluster
    /// lock, and what needs allocation under an exclusive one.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteRangeAsync(long start, long end, ReadOnlyMemory<byte> data, long dataOffset)
    {
        var pos = start;
        var exclusive = false;
        while (pos < end)
        {
            var held = await _ranges.AcquireAsync(_g.ClusterOf(pos), _g.ClusterOf(end - 1) + 1, exclusive).ConfigureAwait(false);
            try
            {
                pos = exclusive
                    ? await WriteExclusiveAsync(pos, end, data, dataOffset).ConfigureAwait(false)
                    : await WriteInPlaceAsync(pos, end, data, dataOffset).ConfigureAwait(false);
            }
            finally
            {
                _ranges.Release(held);
            }
            exclusive = true;
        }
    }

    /// <summary>Writes what maps to data clusters with refcount one; returns where that stopped.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<long> WriteInPlaceAsync(long pos, long end, ReadOnlyMemory<byte> data, long dataOffset)
    {
        while (pos < end)
        {
            var run = await MapAsync(pos, end - pos).ConfigureAwait(false);
            if (run.Kind != Qcow2RunKind.Data || !run.Copied)
                return pos;
            await _file.WriteAsync(run.HostOffset, data.Slice((int)(pos - dataOffset), (int)run.Length)).ConfigureAwait(false);
            pos += run.Length;
        }
        return pos;
    }

    /// <summary>Writes with the clusters held exclusively: in place, or allocating with copy-on-write.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<long> WriteExclusiveAsync(long pos, long end, ReadOnlyMemory<byte> data, long dataOffset)
    {
        while (pos < end)
        {
            var plan = await PlanWriteAsync(pos, end).ConfigureAwait(false);
            if (plan.InPlace)
            {
                await _file.WriteAsync(plan.Host, data.Slice((int)(pos - dataOffset), (int)(plan.WriteEnd - pos))).ConfigureAwait(false);
            }
            else
            {
                await ExecuteAllocationAsync(plan, data, dataOffset).ConfigureAwait(false);
            }
            pos = plan.WriteEnd;
        }
        return pos;
    }

    /// <inheritdoc />
    /// <remarks>
    /// As QEMU's qcow2_co_pwrite_zeroes: whole (sub)clusters become zero clusters (their host clusters
    /// freed with <paramref name="mayUnmap"/>, kept preallocated without), so zeroes never allocate data
    /// clusters; a partial (sub)cluster whose rest already reads as zeroes becomes one too, any other
    /// partial one is written with zero bytes. Version 2 has no zero flag: without a backing image its
    /// clusters are deallocated instead, with one zeroes are written.
    /// </remarks>
    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ThrowIfNotWritable();
        cancellationToken.ThrowIfCancellationRequested();
        return length == 0 ? ValueTask.CompletedTask : WriteZeroesCoreAsync(offset, offset + length, mayUnmap);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteZeroesCoreAsync(long start, long end, bool mayUnmap)
    {
        var held = await _ranges.AcquireAsync(_g.ClusterOf(start), _g.ClusterOf(end - 1) + 1, exclusive: true).ConfigureAwait(false);
        try
        {
            var unit = _g.SubclusterSize;
            var headEnd = Math.Min(end, AlignUp(start, unit));
            var tailStart = end == Size ? end : Math.Max(headEnd, AlignDown(end, unit));
            if (start < headEnd)
                await ZeroPartialUnitAsync(start, headEnd).ConfigureAwait(false);
            if (headEnd < tailStart)
                await ZeroAlignedAsync(headEnd, tailStart, mayUnmap).ConfigureAwait(false);
            if (tailStart < end)
                await ZeroPartialUnitAsync(tailStart, end).ConfigureAwait(false);
        }
        finally
        {
            _ranges.Release(held);
        }
        await WriteThroughIfAskedAsync().ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// As QEMU's qcow2_co_pdiscard: only whole clusters (and the partial last cluster of the image)
    /// are discarded, the rest is ignored. A discarded cluster's host cluster is freed; in version 3
    /// (or with a backing image) the cluster then reads as zeroes, in version 2 without a backing image
    /// it becomes unallocated (which reads as zeroes too); in version 2 with a backing image it reads
    /// from the backing image again, as in QEMU.
    /// </remarks>
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ThrowIfNotWritable();
        cancellationToken.ThrowIfCancellationRequested();
        var from = AlignUp(offset, _g.ClusterSize);
        var end = offset + length;
        var to = end >= Size ? Size : AlignDown(end, _g.ClusterSize);
        return from >= to ? ValueTask.CompletedTask : DiscardCoreAsync(from, to);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask DiscardCoreAsync(long from, long to)
    {
        var held = await _ranges.AcquireAsync(_g.ClusterOf(from), _g.ClusterOf(to - 1) + 1, exclusive: true).ConfigureAwait(false);
        try
        {
            await DeallocateClustersAsync(from, to).ConfigureAwait(false);
        }
        finally
        {
            _ranges.Release(held);
        }
        await WriteThroughIfAskedAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// When set, a write, zero write or discard that changed the mapping returns only once the L2 and
    /// L1 entries it changed are written to the file (in the order a power cut needs: refcounts and
    /// the new clusters' data made durable first), so what was acknowledged survives the process being
    /// killed, as a raw file's writes do: the page cache outlives the process, this image's metadata
    /// cache does not. Concurrent requests share the write-back (and its fdatasync). QEMU keeps them
    /// in its cache until a flush (cache=writeback); with this it behaves as its metadata were
    /// written through, while the data itself still waits for a flush to be durable against power loss.
    /// </summary>
    public bool MetadataWriteThrough
    {
        get => _metadataWriteThrough;
        set => _metadataWriteThrough = value;
    }

    /// <inheritdoc />
    public void DeferMetadataWrites() => MetadataWriteThrough = false;

    /// <inheritdoc />
    /// <remarks>Set before the write-back: a write racing with this one is written through itself.</remarks>
    public ValueTask WriteMetadataThroughAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (ReadOnly)
            return ValueTask.CompletedTask;
        MetadataWriteThrough = true;
        return WriteThroughIfAskedAsync();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteThroughIfAskedAsync()
    {
        if (!MetadataWriteThrough || !(_l2Cache.HasDirty || _l1.HasDirty))
            return;
        await _meta.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            // Another request may have written it back meanwhile.
            if (_l2Cache.HasDirty || _l1.HasDirty)
                await WriteMappingLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>Writes the changed L2 slices (after their refcounts and data, see <see cref="BeforeL2WritebackAsync"/>), then L1 entries after their L2 tables are durable.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteMappingLockedAsync()
    {
        await Refcounts.WriteDirtyAsync().ConfigureAwait(false);
        await _l2Cache.WriteDirtyAsync().ConfigureAwait(false);
        if (_l1.HasDirty)
        {
            if (HasUnsyncedMetadata)
                await FileSyncAsync().ConfigureAwait(false);
            await _l1.WriteDirtyAsync().ConfigureAwait(false);
            MetadataWritten();
        }
    }

    /// <inheritdoc />
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (ReadOnly)
        {
            await _file.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            return;
        }
        long marker;
        bool unsynced;
        await _meta.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            await SyncMetadataLockedAsync().ConfigureAwait(false);
            marker = MetadataWrites;
            unsynced = HasUnsyncedMetadata;
        }
        finally
        {
            _meta.Release();
        }
        // The last fdatasync only makes things durable (the metadata is in order already): as QEMU
        // flushes the file outside s->lock, lookups need not wait for the disk.
        await _file.FlushAsync(CancellationToken.None).ConfigureAwait(false);
        if (unsynced)
        {
            await _meta.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                // Only when nothing was written meanwhile is everything written known durable.
                if (MetadataWrites == marker)
                    ClearSyncFlags();
            }
            finally
            {
                _meta.Release();
            }
        }
    }

    /// <inheritdoc />
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        var layer = await GetLayerStatusAsync(offset, maxLength, cancellationToken).ConfigureAwait(false);
        switch (layer.Kind)
        {
            case Qcow2LayerKind.Data:
                return new ImageExtent(offset, layer.Length, ExtentKind.Data);
            case Qcow2LayerKind.Zero:
                return new ImageExtent(offset, layer.Length, ExtentKind.Zero);
        }
        var backing = Volatile.Read(ref _backing);
        if (backing is null || offset >= backing.Size)
            return new ImageExtent(offset, layer.Length, ExtentKind.Zero);
        var below = await backing.GetBlockStatusAsync(offset, Math.Min(layer.Length, backing.Size - offset), cancellationToken).ConfigureAwait(false);
        return new ImageExtent(offset, Math.Min(below.Length, layer.Length), below.Kind);
    }

    /// <summary>
    /// Block status of this layer alone: data here, zeroes here, or nothing here (the range reads from
    /// the backing image). One extent starting at <paramref name="offset"/>, at most <paramref name="maxLength"/> long.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Qcow2LayerExtent> GetLayerStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        cancellationToken.ThrowIfCancellationRequested();
        var length = Math.Min(maxLength, Size - offset);
        if (length <= 0)
            return new Qcow2LayerExtent(offset, 0, Qcow2LayerKind.Zero);
        var run = await MapAsync(offset, length).ConfigureAwait(false);
        var kind = run.Kind switch
        {
            Qcow2RunKind.Zero => Qcow2LayerKind.Zero,
            Qcow2RunKind.Unallocated => Qcow2LayerKind.Unallocated,
            _ => Qcow2LayerKind.Data,
        };
        return new Qcow2LayerExtent(offset, run.Length, kind);
    }

    /// <inheritdoc />
    /// <remarks>Writes back all metadata and, with lazy refcounts, marks the image clean again. I/O errors are swallowed: what was not flushed was never acknowledged as durable, and the order of writes keeps the image consistent.</remarks>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        if (!ReadOnly)
        {
            await _meta.WaitAsync().ConfigureAwait(false);
            try
            {
                await SyncMetadataLockedAsync().ConfigureAwait(false);
                await FileSyncAsync().ConfigureAwait(false);
                if (_dirtyOnDisk)
                {
                    _header.IncompatibleFeatures &= ~Qcow2Format.IncompatDirty;
                    await WriteFeatureFieldAsync(Qcow2Format.IncompatibleFeaturesField, _header.IncompatibleFeatures).ConfigureAwait(false);
                    await FileSyncAsync().ConfigureAwait(false);
                    _dirtyOnDisk = false;
                }
            }
            catch (Exception e) when (e is IOException or BlockException)
            {
                // See remarks.
            }
            finally
            {
                _meta.Release();
            }
        }
        lock (_compressedLock)
        {
            if (_cachedCompressedCluster is { } cached)
                ArrayPool<byte>.Shared.Return(cached);
            _cachedCompressedCluster = null;
        }
        await _file.DisposeAsync().ConfigureAwait(false);
        if (Interlocked.Exchange(ref _backingLease, null) is { } lease)
            await lease.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Writes back metadata and checks the image's refcounts as <c>qemu-img check</c> does (tests).</summary>
    internal async ValueTask<Qcow2CheckResult> CheckAsync()
    {
        await _meta.WaitAsync().ConfigureAwait(false);
        try
        {
            await SyncMetadataLockedAsync().ConfigureAwait(false);
            return Qcow2Check.Run(_file);
        }
        finally
        {
            _meta.Release();
        }
    }

    // ---- mapping ----------------------------------------------------------------------------

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Qcow2Run> MapAsync(long offset, long maxLength)
    {
        await _meta.WaitAsync().ConfigureAwait(false);
        try
        {
            return await MapLockedAsync(offset, maxLength).ConfigureAwait(false);
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>
    /// The longest run from <paramref name="offset"/> (at most <paramref name="maxLength"/>, within one
    /// L2 slice) that reads one way: contiguous host data of one copied state, zeroes, unallocated,
    /// or a single compressed cluster.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Qcow2Run> MapLockedAsync(long offset, long maxLength)
    {
        var cluster = _g.ClusterOf(offset);
        var end = offset + maxLength;
        var slice = await _l2.GetAsync(cluster, allocate: false).ConfigureAwait(false);
        if (slice.Slot < 0)
        {
            var rangeEnd = (cluster + slice.Count) << _g.ClusterBits;
            return new Qcow2Run(Qcow2RunKind.Unallocated, 0, Math.Min(end, rangeEnd) - offset, 0, false);
        }
        try
        {
            var index = slice.Index;
            var entry = _l2.Entry(slice, index);
            var bitmap = _l2.Bitmap(slice, index);
            var inCluster = _g.OffsetInCluster(offset);
            var type = Qcow2Entries.Classify(_g, entry, bitmap, inCluster >> _g.SubclusterBits);
            var kind = KindOf(type, entry, cluster);
            if (kind == Qcow2RunKind.Compressed)
                return new Qcow2Run(kind, 0, Math.Min(end, (cluster + 1) << _g.ClusterBits) - offset, entry, false);

            var copied = Qcow2Entries.IsCopied(entry);
            var host = kind == Qcow2RunKind.Data ? Qcow2Entries.HostOffset(entry) + inCluster : 0;
            var pos = AlignDown(offset, _g.SubclusterSize) + _g.SubclusterSize;
            while (pos < end)
            {
                var at = _g.OffsetInCluster(pos);
                if (at == 0)
                {
                    if (++index >= slice.Index + slice.Count)
                        break;
                    entry = _l2.Entry(slice, index);
                    bitmap = _l2.Bitmap(slice, index);
                }
                var next = Qcow2Entries.Classify(_g, entry, bitmap, at >> _g.SubclusterBits);
                if (next == Qcow2SubclusterType.Invalid || KindOf(next, entry, _g.ClusterOf(pos)) != kind)
                    break;
                if (kind == Qcow2RunKind.Data
                    && (Qcow2Entries.IsCopied(entry) != copied || Qcow2Entries.HostOffset(entry) + at != host + (pos - offset)))
                    break;
                pos += _g.SubclusterSize;
            }
            return new Qcow2Run(kind, host, Math.Min(pos, end) - offset, entry, copied);
        }
        finally
        {
            _l2.Release(slice);
        }
    }

    private Qcow2RunKind KindOf(Qcow2SubclusterType type, ulong entry, long cluster)
    {
        switch (type)
        {
            case Qcow2SubclusterType.Normal:
                var host = Qcow2Entries.HostOffset(entry);
                if (!_g.IsClusterAligned(host))
                    throw SignalCorruption($"Cluster allocation offset {host:#x} unaligned (guest cluster {cluster:#x})");
                return Qcow2RunKind.Data;
            case Qcow2SubclusterType.Compressed:
                return Qcow2RunKind.Compressed;
            case Qcow2SubclusterType.ZeroPlain:
            case Qcow2SubclusterType.ZeroAlloc:
                return Qcow2RunKind.Zero;
            case Qcow2SubclusterType.UnallocatedPlain:
            case Qcow2SubclusterType.UnallocatedAlloc:
                return Qcow2RunKind.Unallocated;
            default:
                throw SignalCorruption($"Invalid cluster entry found (L2 entry {entry:#x}, guest cluster {cluster:#x})");
        }
    }

    // ---- reading helpers -------------------------------------------------------------------

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadBackingAsync(long offset, Memory<byte> buffer)
    {
        var backing = Volatile.Read(ref _backing);
        var available = backing is null ? 0 : (int)Math.Clamp(backing.Size - offset, 0, buffer.Length);
        if (available > 0)
            await backing!.ReadAsync(offset, buffer[..available]).ConfigureAwait(false);
        buffer.Span[available..].Clear();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadCompressedAsync(ulong entry, long guestOffset, Memory<byte> buffer)
    {
        var inCluster = _g.OffsetInCluster(guestOffset);
        lock (_compressedLock)
        {
            if (_cachedCompressedCluster is { } cached && _cachedCompressedEntry == entry)
            {
                cached.AsSpan(inCluster, buffer.Length).CopyTo(buffer.Span);
                return;
            }
        }
        var (offset, length) = _g.CompressedRange(entry);
        var compressed = ArrayPool<byte>.Shared.Rent(length);
        var cluster = ArrayPool<byte>.Shared.Rent(_g.ClusterSize);
        try
        {
            await _file.ReadAsync(offset, compressed.AsMemory(0, length)).ConfigureAwait(false);
            if (!Qcow2Decompressor.TryDecompress(_header.CompressionType, compressed, length, cluster.AsSpan(0, _g.ClusterSize)))
                throw Qcow2Errors.Corrupt(Location, $"compressed cluster at {offset:#x} ({length} bytes) does not decompress to a cluster");
            cluster.AsSpan(inCluster, buffer.Length).CopyTo(buffer.Span);
            lock (_compressedLock)
            {
                // Keep the last cluster, as QEMU does: sequential reads of it come in several requests.
                (cluster, _cachedCompressedCluster) = (_cachedCompressedCluster, cluster);
                _cachedCompressedEntry = entry;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(compressed);
            if (cluster is not null)
                ArrayPool<byte>.Shared.Return(cluster);
        }
    }

    /// <summary>Reads what part of one cluster held before a write (the copy-on-write source), given its old entry.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadOldClusterPartAsync(long clusterStart, ulong entry, ulong bitmap, long from, Memory<byte> buffer)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var pos = from + done;
            var inCluster = (int)(pos - clusterStart);
            var type = Qcow2Entries.Classify(_g, entry, bitmap, inCluster >> _g.SubclusterBits);
            var limit = type == Qcow2SubclusterType.Compressed ? _g.ClusterSize : AlignDown(inCluster, _g.SubclusterSize) + _g.SubclusterSize;
            var chunk = buffer.Slice(done, Math.Min(buffer.Length - done, limit - inCluster));
            switch (KindOf(type, entry, _g.ClusterOf(clusterStart)))
            {
                case Qcow2RunKind.Data:
                    await _file.ReadAsync(Qcow2Entries.HostOffset(entry) + inCluster, chunk).ConfigureAwait(false);
                    break;
                case Qcow2RunKind.Zero:
                    chunk.Span.Clear();
                    break;
                case Qcow2RunKind.Unallocated:
                    await ReadBackingAsync(pos, chunk).ConfigureAwait(false);
                    break;
                default:
                    await ReadCompressedAsync(entry, pos, chunk).ConfigureAwait(false);
                    break;
            }
            done += chunk.Length;
        }
    }

    // ---- allocating writes -----------------------------------------------------------------

    /// <inheritdoc />
    /// <remarks>Reads keep the asynchronous path (a qcow2 read may need an L2 lookup from the file or the backing image).</remarks>
    public bool TryReadCached(long offset, Span<byte> buffer) => false;

    /// <inheritdoc />
    /// <remarks>
    /// An NBD connection's small write into one allocated cluster, done on its own thread instead of a
    /// hop to the thread pool (which cost ~5x qsd's CPU per 4 KiB write at QD1): only when it needs no
    /// wait at all, the cluster lock free to share, the metadata lock free, the L2 slice cached and the
    /// cluster written in place (data with refcount one), as <see cref="WriteInPlaceAsync"/> would write it.
    /// Anything else (allocation, copy-on-write, a miss) is false and goes the asynchronous way.
    /// </remarks>
    public bool TryWriteInline(long offset, ReadOnlySpan<byte> data)
    {
        if (ReadOnly || data.Length == 0 || offset < 0 || offset + data.Length > Size || HostFile is not { } raw)
            return false;
        var cluster = _g.ClusterOf(offset);
        if (_g.ClusterOf(offset + data.Length - 1) != cluster || !_ranges.TryAcquire(cluster, cluster + 1, exclusive: false, out var held))
            return false;
        try
        {
            var host = InPlaceHostIfCached(cluster, offset, data.Length);
            return host >= 0 && raw.TryWriteInline(host, data);
        }
        finally
        {
            _ranges.Release(held!);
        }
    }

    /// <summary>Where [offset, +length) of the cluster is written in place, from the cache only; -1 when that is not known without waiting.</summary>
    private long InPlaceHostIfCached(long cluster, long offset, int length)
    {
        if (!_meta.Wait(0))
            return -1;
        try
        {
            if (!_l2.TryGetCached(cluster, out var slice))
                return -1;
            try
            {
                var entry = _l2.Entry(slice, slice.Index);
                var a = (int)(offset - (cluster << _g.ClusterBits));
                if (!InPlaceWritable(entry, _l2.Bitmap(slice, slice.Index), a, a + length))
                    return -1;
                // Validates the host offset as a lookup would (an unaligned one signals corruption).
                KindOf(Qcow2SubclusterType.Normal, entry, cluster);
                return Qcow2Entries.HostOffset(entry) + a;
            }
            finally
            {
                _l2.Release(slice);
            }
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>
    /// Decides the next step of a write at <paramref name="pos"/> under an exclusive cluster lock
    /// (QEMU's handle_copied / handle_alloc): in place, keep the cluster's own host cluster, or
    /// allocate contiguous new host clusters for as many following clusters as need them.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Qcow2WritePlan> PlanWriteAsync(long pos, long end)
    {
        await _meta.WaitAsync().ConfigureAwait(false);
        try
        {
            var cluster = _g.ClusterOf(pos);
            var clusterStart = cluster << _g.ClusterBits;
            var a = (int)(pos - clusterStart);
            var b = (int)(Math.Min(end, clusterStart + _g.ClusterSize) - clusterStart);

            var probe = await _l2.GetAsync(cluster, allocate: false).ConfigureAwait(false);
            if (probe.Slot >= 0)
            {
                var inPlace = InPlaceWritable(_l2.Entry(probe, probe.Index), _l2.Bitmap(probe, probe.Index), a, b);
                _l2.Release(probe);
                if (inPlace)
                {
                    var run = await MapLockedAsync(pos, end - pos).ConfigureAwait(false);
                    return new Qcow2WritePlan { InPlace = true, Host = run.HostOffset, WriteStart = pos, WriteEnd = pos + run.Length };
                }
            }

            await EnsureWritableLockedAsync().ConfigureAwait(false);
            var slice = await _l2.GetAsync(cluster, allocate: true).ConfigureAwait(false);
            try
            {
                var entry = _l2.Entry(slice, slice.Index);
                var bitmap = _l2.Bitmap(slice, slice.Index);
                if (KeepsHostCluster(entry))
                    return PlanKeep(cluster, entry, bitmap, pos, clusterStart + b, a, b);

                var count = 1;
                if (b == _g.ClusterSize)
                {
                    while (count < slice.Count)
                    {
                        var nextStart = clusterStart + ((long)count << _g.ClusterBits);
                        if (nextStart >= end)
                            break;
                        var next = _l2.Entry(slice, slice.Index + count);
                        if (KeepsHostCluster(next))
                            break;
                        count++;
                        if (nextStart + _g.ClusterSize > end)
                            break;
                    }
                }
                var writeEnd = Math.Min(end, clusterStart + ((long)count << _g.ClusterBits));
                var lastIndex = slice.Index + count - 1;
                var lastEntry = _l2.Entry(slice, lastIndex);
                var lastBitmap = _l2.Bitmap(slice, lastIndex);
                var lastStart = (cluster + count - 1) << _g.ClusterBits;
                var (host, pristine) = await Refcounts.AllocateAsync(count).ConfigureAwait(false);
                return new Qcow2WritePlan
                {
                    FirstCluster = cluster,
                    ClusterCount = count,
                    Host = host,
                    Pristine = pristine,
                    WriteStart = pos,
                    WriteEnd = writeEnd,
                    CowStart = clusterStart + NewClusterCowHead(entry, bitmap, a),
                    CowEnd = lastStart + NewClusterCowTail(lastEntry, lastBitmap, (int)(writeEnd - lastStart)),
                    FirstEntry = entry,
                    FirstBitmap = bitmap,
                    LastEntry = lastEntry,
                    LastBitmap = lastBitmap,
                };
            }
            finally
            {
                _l2.Release(slice);
            }
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>A write of [a, b) in this cluster can go in place: every subcluster it touches is data with refcount one.</summary>
    private bool InPlaceWritable(ulong entry, ulong bitmap, int a, int b)
    {
        if (!Qcow2Entries.HasHostCluster(entry) || !Qcow2Entries.IsCopied(entry))
            return false;
        for (var sc = a >> _g.SubclusterBits; sc <= (b - 1) >> _g.SubclusterBits; sc++)
        {
            if (Qcow2Entries.Classify(_g, entry, bitmap, sc) != Qcow2SubclusterType.Normal)
                return false;
        }
        return true;
    }

    /// <summary>The cluster has a host cluster of its own with refcount one (preallocated, or partly allocated subclusters): reuse it.</summary>
    private static bool KeepsHostCluster(ulong entry) => Qcow2Entries.HasHostCluster(entry) && Qcow2Entries.IsCopied(entry);

    private Qcow2WritePlan PlanKeep(long cluster, ulong entry, ulong bitmap, long pos, long writeEnd, int a, int b)
    {
        var clusterStart = cluster << _g.ClusterBits;
        int head;
        int tail;
        if (_g.ExtendedL2)
        {
            // Subclusters already holding data need no copy; the others are filled to their edges.
            head = Qcow2Entries.Classify(_g, entry, bitmap, a >> _g.SubclusterBits) == Qcow2SubclusterType.Normal ? a : AlignDown(a, _g.SubclusterSize);
            tail = Qcow2Entries.Classify(_g, entry, bitmap, (b - 1) >> _g.SubclusterBits) == Qcow2SubclusterType.Normal ? b : AlignUp(b, _g.SubclusterSize);
        }
        else
        {
            // A preallocated zero cluster: the whole of it gets written (its old bytes are not zeroes).
            head = 0;
            tail = _g.ClusterSize;
        }
        return new Qcow2WritePlan
        {
            FirstCluster = cluster,
            ClusterCount = 1,
            Host = Qcow2Entries.HostOffset(entry),
            Keep = true,
            WriteStart = pos,
            WriteEnd = writeEnd,
            CowStart = clusterStart + head,
            CowEnd = clusterStart + tail,
            FirstEntry = entry,
            FirstBitmap = bitmap,
            LastEntry = entry,
            LastBitmap = bitmap,
        };
    }

    /// <summary>
    /// Where the copy into a new cluster starts (QEMU's calculate_l2_meta): the cluster's start, except
    /// with subclusters, where only the written subclusters — and any the old host cluster held data in — are copied.
    /// </summary>
    private int NewClusterCowHead(ulong entry, ulong bitmap, int a)
    {
        if (!_g.ExtendedL2 || Qcow2Entries.IsCompressed(entry))
            return 0;
        var head = AlignDown(a, _g.SubclusterSize);
        var allocated = (uint)bitmap;
        if (Qcow2Entries.HostOffset(entry) != 0 && allocated != 0)
            head = Math.Min(head, BitOperations.TrailingZeroCount(allocated) << _g.SubclusterBits);
        return head;
    }

    private int NewClusterCowTail(ulong entry, ulong bitmap, int b)
    {
        if (!_g.ExtendedL2 || Qcow2Entries.IsCompressed(entry))
            return _g.ClusterSize;
        var tail = AlignUp(b, _g.SubclusterSize);
        var allocated = (uint)bitmap;
        if (Qcow2Entries.HostOffset(entry) != 0 && allocated != 0)
            tail = Math.Max(tail, (32 - BitOperations.LeadingZeroCount(allocated)) << _g.SubclusterBits);
        return tail;
    }

    /// <summary>Writes the data and its copy-on-write edges into the plan's host clusters, then links them.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ExecuteAllocationAsync(Qcow2WritePlan plan, ReadOnlyMemory<byte> data, long dataOffset)
    {
        var firstStart = plan.FirstCluster << _g.ClusterBits;
        try
        {
            if (plan.CowStart < plan.WriteStart)
            {
                await WriteCowAsync(plan, firstStart, plan.FirstEntry, plan.FirstBitmap, plan.CowStart, (int)(plan.WriteStart - plan.CowStart)).ConfigureAwait(false);
            }
            await _file.WriteAsync(plan.Host + (plan.WriteStart - firstStart), data.Slice((int)(plan.WriteStart - dataOffset), (int)(plan.WriteEnd - plan.WriteStart))).ConfigureAwait(false);
            if (plan.WriteEnd < plan.CowEnd)
            {
                var lastStart = (plan.FirstCluster + plan.ClusterCount - 1) << _g.ClusterBits;
                await WriteCowAsync(plan, lastStart, plan.LastEntry, plan.LastBitmap, plan.WriteEnd, (int)(plan.CowEnd - plan.WriteEnd)).ConfigureAwait(false);
            }
            if (plan.Pristine)
            {
                // Skipped zero edges may leave the file ending inside the new clusters; qemu-img check
                // calls a reference a cluster or more past the end corruption, so extend it now.
                var hostEnd = plan.Host + ((long)plan.ClusterCount << _g.ClusterBits);
                if (_file.Length < hostEnd)
                    await _file.WriteAsync(hostEnd - 1, s_oneZero).ConfigureAwait(false);
            }
        }
        catch
        {
            if (!plan.Keep)
                await AbortAllocationAsync(plan).ConfigureAwait(false);
            throw;
        }
        await LinkAsync(plan).ConfigureAwait(false);
    }

    /// <summary>Copies the old content of guest [<paramref name="from"/>, +length) into its place in the new host cluster.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCowAsync(Qcow2WritePlan plan, long clusterStart, ulong entry, ulong bitmap, long from, int length)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var memory = buffer.AsMemory(0, length);
            await ReadOldClusterPartAsync(clusterStart, entry, bitmap, from, memory).ConfigureAwait(false);
            // New clusters past the file's old end read as zeroes already: zero edges need no write.
            if (plan.Pristine && !memory.Span.ContainsAnyExcept((byte)0))
                return;
            await _file.WriteAsync(plan.Host + (from - (plan.FirstCluster << _g.ClusterBits)), memory).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Points the L2 entries at the written clusters (QEMU's qcow2_alloc_cluster_link_l2) and queues the old ones for freeing.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask LinkAsync(Qcow2WritePlan plan)
    {
        await _meta.WaitAsync().ConfigureAwait(false);
        try
        {
            var slice = await _l2.GetAsync(plan.FirstCluster, allocate: false).ConfigureAwait(false);
            if (slice.Slot < 0)
                throw new InvalidOperationException("The L2 table of a planned write disappeared");
            try
            {
                for (var i = 0; i < plan.ClusterCount; i++)
                {
                    var index = slice.Index + i;
                    var old = _l2.Entry(slice, index);
                    var oldBitmap = _l2.Bitmap(slice, index);
                    var clusterStart = (plan.FirstCluster + i) << _g.ClusterBits;
                    var from = (int)(Math.Max(plan.CowStart, clusterStart) - clusterStart);
                    var to = (int)(Math.Min(plan.CowEnd, clusterStart + _g.ClusterSize) - clusterStart);
                    var host = plan.Keep ? Qcow2Entries.HostOffset(old) : plan.Host + ((long)i << _g.ClusterBits);
                    var bitmap = 0UL;
                    if (_g.ExtendedL2)
                    {
                        var first = from >> _g.SubclusterBits;
                        var last = ((to - 1) >> _g.SubclusterBits) + 1;
                        var kept = plan.Keep ? oldBitmap : oldBitmap & ~Qcow2Format.BitmapAllAllocated;
                        bitmap = (kept & ~Qcow2Entries.ZeroRange(first, last)) | Qcow2Entries.AllocRange(first, last);
                    }
                    _l2.Set(slice, index, (ulong)host | Qcow2Format.FlagCopied, bitmap);
                    if (!plan.Keep)
                        QueueFreeLocked(old);
                }
                _linkedSinceSync = true;
                _ownMetadataWrites++;
            }
            finally
            {
                _l2.Release(slice);
            }
            if (Refcounts.PendingFreeCount > MaxPendingFrees)
                await SyncMetadataLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            _meta.Release();
        }
    }

    private async ValueTask AbortAllocationAsync(Qcow2WritePlan plan)
    {
        await _meta.WaitAsync().ConfigureAwait(false);
        try
        {
            // Nothing points to these clusters yet: they can be freed at once.
            await Refcounts.DecrementNowAsync(plan.Host, (long)plan.ClusterCount << _g.ClusterBits).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or BlockException)
        {
            // A leak at worst; the write's own failure is the one to report.
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>Queues what an old L2 entry held (a host cluster, or the sectors of a compressed cluster) for freeing.</summary>
    private void QueueFreeLocked(ulong oldEntry)
    {
        if (Qcow2Entries.IsCompressed(oldEntry))
        {
            lock (_compressedLock)
            {
                // Its sectors may be reused for other data: the cached copy must not answer for it again.
                if (_cachedCompressedEntry == oldEntry)
                    _cachedCompressedEntry = 0;
            }
            var (offset, length) = _g.CompressedRange(oldEntry);
            Refcounts.QueueFree(offset, length);
        }
        else if (Qcow2Entries.HasHostCluster(oldEntry))
        {
            Refcounts.QueueFree(Qcow2Entries.HostOffset(oldEntry), _g.ClusterSize);
        }
    }

    // ---- zeroes and discards ---------------------------------------------------------------

    /// <summary>
    /// Zeroes [<paramref name="from"/>, <paramref name="to"/>) inside one subcluster: when the rest of
    /// the subcluster already reads as zeroes the whole becomes a zero subcluster, else zero bytes are written.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ZeroPartialUnitAsync(long from, long to)
    {
        var unitStart = AlignDown(from, _g.SubclusterSize);
        var unitEnd = Math.Min(unitStart + _g.SubclusterSize, AlignUp(Size, _g.SubclusterSize));
        if (await UnitReadsAsZeroAsync(unitStart, unitEnd).ConfigureAwait(false))
        {
            if (_header.Version >= 3)
                await ZeroAlignedAsync(unitStart, Math.Min(unitEnd, Size), mayUnmap: false).ConfigureAwait(false);
            return;
        }
        await WriteZeroBytesAsync(from, to).ConfigureAwait(false);
    }

    /// <summary>True when the subcluster's type says it reads as zeroes (a zero subcluster, or unallocated over nothing or over zeroes).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> UnitReadsAsZeroAsync(long unitStart, long unitEnd)
    {
        var run = await MapAsync(unitStart, unitEnd - unitStart).ConfigureAwait(false);
        if (run.Length < unitEnd - unitStart)
            return false;
        if (run.Kind == Qcow2RunKind.Zero)
            return true;
        if (run.Kind != Qcow2RunKind.Unallocated)
            return false;
        var backing = Volatile.Read(ref _backing);
        if (backing is null || unitStart >= backing.Size)
            return true;
        var end = Math.Min(unitEnd, backing.Size);
        for (var pos = unitStart; pos < end;)
        {
            var e = await backing.GetBlockStatusAsync(pos, end - pos).ConfigureAwait(false);
            if (e.Kind != ExtentKind.Zero || e.Length <= 0)
                return false;
            pos += e.Length;
        }
        return true;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteZeroBytesAsync(long from, long to)
    {
        // The clusters are already held exclusively by the caller.
        var zeroes = ZeroBuffer.Memory;
        for (var pos = from; pos < to;)
        {
            var chunk = (int)Math.Min(to - pos, zeroes.Length);
            var chunkEnd = pos + chunk;
            await WriteExclusiveAsync(pos, chunkEnd, zeroes, pos).ConfigureAwait(false);
            pos = chunkEnd;
        }
    }

    /// <summary>
    /// Zeroes whole subclusters [<paramref name="from"/>, <paramref name="to"/>) (<paramref name="to"/>
    /// may be the image's end), per L2 slice under the metadata lock (QEMU's qcow2_subcluster_zeroize).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ZeroAlignedAsync(long from, long to, bool mayUnmap)
    {
        if (_header.Version < 3)
        {
            // No zero flag: deallocating reads as zeroes only without a backing image.
            if (Volatile.Read(ref _backing) is null)
                await DeallocateClustersAsync(from, to).ConfigureAwait(false);
            else
                await WriteZeroBytesAsync(from, to).ConfigureAwait(false);
            return;
        }

        var pos = from;
        while (pos < to)
        {
            var fallback = -1L;
            var fallbackEnd = 0L;
            await _meta.WaitAsync().ConfigureAwait(false);
            try
            {
                await EnsureWritableLockedAsync().ConfigureAwait(false);
                var cluster = _g.ClusterOf(pos);
                var backed = Volatile.Read(ref _backing) is not null;
                var slice = await _l2.GetAsync(cluster, allocate: false).ConfigureAwait(false);
                if (slice.Slot < 0)
                {
                    var rangeEnd = Math.Min(to, (cluster + slice.Count) << _g.ClusterBits);
                    if (!backed)
                    {
                        pos = rangeEnd; // unallocated over nothing reads as zeroes already
                        continue;
                    }
                    slice = await _l2.GetAsync(cluster, allocate: true).ConfigureAwait(false);
                }
                try
                {
                    for (var i = 0; i < slice.Count && pos < to; i++, cluster++)
                    {
                        var clusterStart = cluster << _g.ClusterBits;
                        var clusterEnd = Math.Min(clusterStart + _g.ClusterSize, to);
                        var whole = pos == clusterStart && (clusterEnd == clusterStart + _g.ClusterSize || clusterEnd >= Size);
                        var index = slice.Index + i;
                        var entry = _l2.Entry(slice, index);
                        var bitmap = _l2.Bitmap(slice, index);
                        if (whole)
                        {
                            ZeroWholeClusterLocked(slice, index, entry, bitmap, mayUnmap);
                        }
                        else if (!_g.ExtendedL2 || Qcow2Entries.IsCompressed(entry))
                        {
                            // A compressed cluster has no subclusters (and without extended L2 there are none
                            // to mark): write zero bytes into a copy of it.
                            fallback = pos;
                            fallbackEnd = clusterEnd;
                            pos = clusterEnd;
                            break;
                        }
                        else
                        {
                            var first = _g.OffsetInCluster(pos) >> _g.SubclusterBits;
                            var last = (int)((AlignUp(clusterEnd, _g.SubclusterSize) - clusterStart) >> _g.SubclusterBits);
                            var zeroed = (bitmap | Qcow2Entries.ZeroRange(first, last)) & ~Qcow2Entries.AllocRange(first, last);
                            if (zeroed != bitmap)
                                _l2.Set(slice, index, entry, zeroed);
                        }
                        pos = clusterEnd;
                    }
                }
                finally
                {
                    _l2.Release(slice);
                }
                if (Refcounts.PendingFreeCount > MaxPendingFrees)
                    await SyncMetadataLockedAsync().ConfigureAwait(false);
            }
            finally
            {
                _meta.Release();
            }
            if (fallback >= 0)
                await WriteZeroBytesAsync(fallback, fallbackEnd).ConfigureAwait(false);
        }
    }

    /// <summary>QEMU's zero_in_l2_slice for one cluster: a zero cluster, its host cluster kept unless unmapping (always for compressed).</summary>
    private void ZeroWholeClusterLocked(Qcow2L2Slice slice, int index, ulong entry, ulong bitmap, bool mayUnmap)
    {
        var unmap = Qcow2Entries.IsCompressed(entry) || (mayUnmap && Qcow2Entries.HasHostCluster(entry));
        var newEntry = unmap ? 0 : entry;
        var newBitmap = 0UL;
        if (_g.ExtendedL2)
            newBitmap = Qcow2Format.BitmapAllZeroes;
        else
            newEntry |= Qcow2Format.FlagZero;
        if (newEntry == entry && newBitmap == bitmap)
            return;
        _l2.Set(slice, index, newEntry, newBitmap);
        if (unmap)
            QueueFreeLocked(entry);
    }

    /// <summary>
    /// QEMU's discard_in_l2_slice (full_discard false) for whole clusters [<paramref name="from"/>,
    /// <paramref name="to"/>): each allocated cluster (or each cluster, over a backing image) becomes a
    /// zero cluster in version 3 and unallocated in version 2, and its host cluster is freed.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask DeallocateClustersAsync(long from, long to)
    {
        var pos = from;
        while (pos < to)
        {
            await _meta.WaitAsync().ConfigureAwait(false);
            try
            {
                await EnsureWritableLockedAsync().ConfigureAwait(false);
                var cluster = _g.ClusterOf(pos);
                var backed = Volatile.Read(ref _backing) is not null;
                var slice = await _l2.GetAsync(cluster, allocate: false).ConfigureAwait(false);
                if (slice.Slot < 0)
                {
                    if (!backed || _header.Version < 3)
                    {
                        pos = Math.Min(to, (cluster + slice.Count) << _g.ClusterBits);
                        continue;
                    }
                    slice = await _l2.GetAsync(cluster, allocate: true).ConfigureAwait(false);
                }
                try
                {
                    for (var i = 0; i < slice.Count && pos < to; i++, cluster++)
                    {
                        var index = slice.Index + i;
                        var entry = _l2.Entry(slice, index);
                        var bitmap = _l2.Bitmap(slice, index);
                        var allocated = Qcow2Entries.IsCompressed(entry) || Qcow2Entries.HasHostCluster(entry);
                        pos = Math.Min(to, (cluster + 1) << _g.ClusterBits);
                        if (!allocated && !backed)
                            continue;
                        var newEntry = _g.ExtendedL2 || _header.Version < 3 ? 0 : Qcow2Format.FlagZero;
                        var newBitmap = _g.ExtendedL2 ? Qcow2Format.BitmapAllZeroes : 0;
                        if (newEntry == entry && newBitmap == bitmap)
                            continue;
                        _l2.Set(slice, index, newEntry, newBitmap);
                        QueueFreeLocked(entry);
                    }
                }
                finally
                {
                    _l2.Release(slice);
                }
                if (Refcounts.PendingFreeCount > MaxPendingFrees)
                    await SyncMetadataLockedAsync().ConfigureAwait(false);
            }
            finally
            {
                _meta.Release();
            }
        }
    }

    // ---- metadata write-back ---------------------------------------------------------------

    /// <summary>Something written since the last fdatasync that later metadata writes must not overtake.</summary>
    private bool HasUnsyncedMetadata =>
        _linkedSinceSync || _metadataWrittenSinceSync || _l2Cache.WrittenSinceSync || (_refcounts?.Cache.WrittenSinceSync ?? false);

    /// <summary>
    /// Writes all dirty metadata in the order that keeps the image consistent at every step:
    /// refcounts, [flush], L2 slices, [flush], L1 entries, [flush], then the queued frees.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SyncMetadataLockedAsync()
    {
        if (ReadOnly)
            return;
        var refcounts = Refcounts;
        await refcounts.WriteDirtyAsync().ConfigureAwait(false);
        await _l2Cache.WriteDirtyAsync().ConfigureAwait(false); // flushes first through BeforeL2WritebackAsync
        if (_l1.HasDirty)
        {
            if (HasUnsyncedMetadata)
                await FileSyncAsync().ConfigureAwait(false);
            await _l1.WriteDirtyAsync().ConfigureAwait(false);
            MetadataWritten();
        }
        if (refcounts.HasPendingFrees)
        {
            // The L2 entries that stopped using these clusters must be durable before the clusters are reused.
            if (HasUnsyncedMetadata)
                await FileSyncAsync().ConfigureAwait(false);
            await refcounts.ApplyPendingFreesAsync().ConfigureAwait(false);
            await refcounts.WriteDirtyAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Before an L2 slice is written: the refcounts and data of what it links must be on disk (QEMU's L2 → refcount cache dependency).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask BeforeL2WritebackAsync()
    {
        if (_lazyRefcounts)
            return; // the image is marked dirty: stale refcounts are rebuilt at the next open
        await Refcounts.WriteDirtyAsync().ConfigureAwait(false);
        if (_linkedSinceSync || _metadataWrittenSinceSync || Refcounts.Cache.WrittenSinceSync)
            await FileSyncAsync().ConfigureAwait(false);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FileSyncAsync()
    {
        ClearSyncFlags();
        try
        {
            await _file.FlushAsync().ConfigureAwait(false);
        }
        catch
        {
            MetadataWritten(); // nothing is known durable, also to a flush that was running meanwhile
            throw;
        }
    }

    private void ClearSyncFlags()
    {
        _linkedSinceSync = false;
        _metadataWrittenSinceSync = false;
        _l2Cache.WrittenSinceSync = false;
        if (_refcounts is not null)
            _refcounts.Cache.WrittenSinceSync = false;
    }

    /// <summary>Metadata (or the data of newly linked clusters) written since the image was opened; see <see cref="FlushAsync"/>.</summary>
    private long MetadataWrites => _ownMetadataWrites + _l2Cache.Writes + (_refcounts?.Cache.Writes ?? 0);

    private void MetadataWritten()
    {
        _metadataWrittenSinceSync = true;
        _ownMetadataWrites++;
    }

    /// <summary>Before the first metadata change: refuse on a corrupt image; with lazy refcounts, mark the image dirty on disk.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask EnsureWritableLockedAsync()
    {
        if (_corrupt)
            throw Qcow2Errors.Corrupt(Location, "the image was marked corrupt; it cannot be written");
        if (_lazyRefcounts && !_dirtyOnDisk)
        {
            _header.IncompatibleFeatures |= Qcow2Format.IncompatDirty;
            await WriteFeatureFieldAsync(Qcow2Format.IncompatibleFeaturesField, _header.IncompatibleFeatures).ConfigureAwait(false);
            await FileSyncAsync().ConfigureAwait(false);
            _dirtyOnDisk = true;
        }
    }

    /// <summary>
    /// Metadata that cannot be right was found: as QEMU's qcow2_signal_corruption (fatal), the image is
    /// marked corrupt on disk (when writable) and refuses writes from now on.
    /// </summary>
    private BlockException SignalCorruption(string what)
    {
        if (!ReadOnly && !_corrupt && _header.Version >= 3)
        {
            _corrupt = true;
            try
            {
                WriteFeatureField(_file, Qcow2Format.IncompatibleFeaturesField, _header.IncompatibleFeatures | Qcow2Format.IncompatCorrupt);
                _file.Flush();
            }
            catch (IOException)
            {
                // The refusal below still stands.
            }
        }
        _corrupt = true;
        return Qcow2Errors.Corrupt(Location, what);
    }

    private ValueTask WriteFeatureFieldAsync(int fieldOffset, ulong value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        return _file.WriteAsync(fieldOffset, bytes);
    }

    private static void WriteFeatureField(IQcow2File file, int fieldOffset, ulong value)
    {
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        file.Write(fieldOffset, bytes);
    }

    private void ThrowIfNotWritable()
    {
        // The node refuses writes to a read-only node first; reaching here is a caller bug.
        if (ReadOnly)
            throw new InvalidOperationException($"Image '{Location}' is open read-only");
        if (_corrupt)
            throw Qcow2Errors.Corrupt(Location, "the image was marked corrupt; it cannot be written");
    }

    private static long AlignDown(long value, long unit) => value & ~(unit - 1);

    private static long AlignUp(long value, long unit) => (value + unit - 1) & ~(unit - 1);

    private static int AlignDown(int value, int unit) => value & ~(unit - 1);

    private static int AlignUp(int value, int unit) => (value + unit - 1) & ~(unit - 1);

    // ---- open-time validation --------------------------------------------------------------

    /// <summary>QEMU's qcow2_do_open checks of a parsed header, with its messages.</summary>
    private static Qcow2Geometry Validate(Qcow2Header h, bool readOnly, string name)
    {
        if (h.CryptMethod != Qcow2Format.CryptNone)
            throw Qcow2Errors.Unsupported(name, $"encrypted qcow2 images ({(h.CryptMethod == Qcow2Format.CryptAes ? "aes" : h.CryptMethod == Qcow2Format.CryptLuks ? "luks" : $"method {h.CryptMethod}")}) are not supported");

        switch (h.CompressionType)
        {
            case Qcow2Format.CompressionZlib:
                if ((h.IncompatibleFeatures & Qcow2Format.IncompatCompression) != 0)
                    throw Qcow2Errors.CorruptAtOpen(name, "qcow2: Compression type incompatible feature bit must not be set");
                break;
            case Qcow2Format.CompressionZstd:
                if ((h.IncompatibleFeatures & Qcow2Format.IncompatCompression) == 0)
                    throw Qcow2Errors.CorruptAtOpen(name, "qcow2: Compression type incompatible feature bit must be set");
                if (!LibZstd.IsAvailable)
                    throw Qcow2Errors.Unsupported(name, "zstd compression needs the system library libzstd.so.1 (Debian package libzstd1), which is not installed");
                break;
            default:
                throw Qcow2Errors.Unsupported(name, $"qcow2: unknown compression type: {h.CompressionType}");
        }

        const ulong known = Qcow2Format.IncompatDirty | Qcow2Format.IncompatCorrupt | Qcow2Format.IncompatCompression | Qcow2Format.IncompatExtendedL2;
        if ((h.IncompatibleFeatures & ~known) != 0)
            throw Qcow2Errors.Unsupported(name, $"Unsupported qcow2 feature(s): {h.DescribeIncompatible(h.IncompatibleFeatures & ~known)}");
        if (h.IsCorrupt && !readOnly)
            throw Qcow2Errors.CorruptAtOpen(name, "qcow2: Image is corrupt; cannot be opened read/write");
        if (h.ExtendedL2 && h.ClusterBits - 5 < Qcow2Format.MinClusterBits)
            throw Qcow2Errors.Unsupported(name, $"Unsupported subcluster size: {1 << (h.ClusterBits - 5)}");
        if (h.RefcountOrder > 6)
            throw Qcow2Errors.CorruptAtOpen(name, "Reference count entry width too large; may not exceed 64 bits");
        if (h.RefcountTableClusters == 0)
            throw Qcow2Errors.CorruptAtOpen(name, "Image does not contain a reference count table");

        var geometry = new Qcow2Geometry(h.ClusterBits, h.ExtendedL2, h.RefcountOrder);
        ValidateTable(geometry, name, h.RefcountTableOffset, h.RefcountTableClusters, geometry.ClusterSize, Qcow2Format.MaxRefcountTableBytes, "Reference count table");
        ValidateTable(geometry, name, h.SnapshotsOffset, h.SnapshotCount, 40, 40L * 65536, "Snapshot table");
        ValidateTable(geometry, name, h.L1TableOffset, h.L1Size, 8, Qcow2Format.MaxL1Bytes, "Active L1 table");

        var needed = geometry.L1EntriesFor((long)Math.Min(h.Size, long.MaxValue / 2));
        if (needed > int.MaxValue || h.Size > long.MaxValue / 2)
            throw Qcow2Errors.TooLarge(name, "Image is too big");
        if (h.L1Size < needed)
            throw Qcow2Errors.CorruptAtOpen(name, "L1 table is too small");
        if (h.SnapshotCount > 0 && !readOnly)
            throw Qcow2Errors.Unsupported(name, $"the image has {h.SnapshotCount} internal snapshot(s); images with internal snapshots can only be opened read-only here");
        return geometry;
    }

    /// <summary>QEMU's qcow2_validate_table.</summary>
    private static void ValidateTable(Qcow2Geometry g, string name, ulong offset, ulong entries, long entryLength, long maxBytes, string what)
    {
        if (entries > (ulong)(maxBytes / entryLength))
            throw Qcow2Errors.TooLarge(name, $"{what} too large");
        if ((ulong)long.MaxValue - (entries * (ulong)entryLength) < offset || !g.IsClusterAligned((long)offset))
            throw Qcow2Errors.CorruptAtOpen(name, $"{what} offset invalid");
    }
}
