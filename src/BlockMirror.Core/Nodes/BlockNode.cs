using System.Runtime.CompilerServices;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>
/// A named image the service owns, with its dirty bitmaps and its write path. Every
/// content-changing request from any door goes through <see cref="WriteAsync(WriteRequest, CancellationToken)"/>:
/// range and read-only checks → the job's filter, if one is inserted (which passes it down) → the
/// image → every enabled bitmap marks the range, whether the image succeeded or not. A mirror's
/// own writes to its target take the same path past the target's guard (<see cref="WriteAsOwnerAsync"/>).
/// Registry changes (bitmaps, filter, pivot) are made under the block layer's control
/// lock, with writes quiesced where it matters.
/// </summary>
public sealed class BlockNode
{
    // Copy-on-write array: the data path iterates it without a lock or an allocation.
    private DirtyBitmap[] _bitmaps = [];
    private IBlockImage _image;
    private volatile IWriteFilter? _filter;
    private volatile string? _imageReplaced;
    private readonly HashSet<string> _exports = new(StringComparer.Ordinal);
    // Guards the writers of the bitmap array (its readers need none) and the export names.
    private readonly Lock _membersLock = new();

    public BlockNode(string name, string driver, IBlockImage image, string? path, string? uri, bool readOnly, DateTime createdAt)
    {
        Name = name;
        Driver = driver;
        _image = image;
        Path = path;
        Uri = uri;
        ReadOnly = readOnly;
        CreatedAt = createdAt;
    }

    public string Name { get; }

    public string Driver { get; private set; }

    /// <summary>Image path relative to the image root (raw driver).</summary>
    public string? Path { get; private set; }

    /// <summary>Remote export URI (nbd driver).</summary>
    public string? Uri { get; private set; }

    public bool ReadOnly { get; }

    public DateTime CreatedAt { get; }

    public IBlockImage Image => Volatile.Read(ref _image);

    public long Size => Image.Size;

    /// <summary>Writes are quiesced through this gate by transactions and by a mirror's completion.</summary>
    public QuiesceGate QuiesceGate { get; } = new();

    /// <summary>The job using this node as source or target, if any.</summary>
    public string? JobId { get; set; }

    /// <summary>Names of the NBD exports serving this node.</summary>
    public IReadOnlyCollection<string> Exports
    {
        get
        {
            lock (_membersLock)
                return [.. _exports];
        }
    }

    public bool Busy => JobId is not null;

    /// <summary>
    /// A job writes this node as its owner and refuses every other writer (a mirror's target): last
    /// in the quiesce order, since the job's writes to it come from inside its device's quiesce gate.
    /// </summary>
    internal bool WrittenByItsJobOnly => _filter is Jobs.TargetGuardFilter;

    /// <summary>
    /// Why the node's path no longer names the file it has open (renamed over, removed, or a directory
    /// on the path swapped for a symbolic link leading outside the image root), or null while it does.
    /// Writes are refused from then on (<c>image-replaced</c>): they would go to a file nobody can see
    /// under that path any more. Set by <see cref="ImageReplacementCheck"/>, which checks in the background and
    /// before control operations.
    /// </summary>
    public string? ImageReplacedReason => _imageReplaced;

    public bool ImageReplaced => _imageReplaced is not null;

    /// <summary>Records the replacement (the first reason found stays); true when it was not recorded yet.</summary>
    internal bool MarkImageReplaced(string reason) => Interlocked.CompareExchange(ref _imageReplaced, reason, null) is null;

    public IReadOnlyList<DirtyBitmap> Bitmaps => Volatile.Read(ref _bitmaps);

    public IWriteFilter? Filter
    {
        get => _filter;
        set => _filter = value;
    }

    /// <summary>
    /// The journal of persistent bitmaps (null = none): makes a byte range of a persistent bitmap
    /// durable, completing at once when it already is. Called before the image changes (write-ahead:
    /// a write applied but never acknowledged must be dirty after a crash too), and again after a
    /// persistent bitmap gained newly dirty granules (then normally a bit test).
    /// </summary>
    public Func<BlockNode, DirtyBitmap, long, long, ValueTask>? EnsureBitmapRangeDurable { get; set; }

    public DirtyBitmap? FindBitmap(string name)
    {
        foreach (var b in Volatile.Read(ref _bitmaps))
        {
            if (b.Name == name)
                return b;
        }
        return null;
    }

    public DirtyBitmap GetBitmap(string name) => FindBitmap(name) ?? throw BlockErrors.BitmapNotFound(name);

    internal void AddBitmap(DirtyBitmap bitmap)
    {
        lock (_membersLock)
            Volatile.Write(ref _bitmaps, [.. _bitmaps, bitmap]);
    }

    internal void RemoveBitmap(DirtyBitmap bitmap)
    {
        lock (_membersLock)
            Volatile.Write(ref _bitmaps, _bitmaps.Where(b => !ReferenceEquals(b, bitmap)).ToArray());
    }

    internal void AddExport(string name)
    {
        lock (_membersLock)
            _exports.Add(name);
    }

    internal void RemoveExport(string name)
    {
        lock (_membersLock)
            _exports.Remove(name);
    }

    /// <summary>Replaces the image (mirror pivot): from now on the node reads and writes <paramref name="image"/>.</summary>
    internal void Pivot(IBlockImage image, string driver, string? path, string? uri)
    {
        Volatile.Write(ref _image, image);
        // The target's image was checked before the pivot; whatever happened to the old one is behind us.
        _imageReplaced = null;
        Driver = driver;
        Path = path;
        Uri = uri;
    }

    /// <summary>Throws <c>out-of-range</c> unless [offset, offset+length) lies inside the node.</summary>
    public void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            throw BlockErrors.OutOfRange(offset, length, Size);
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, buffer.Length);
        return Image.ReadAsync(offset, buffer, cancellationToken);
    }

    /// <summary>
    /// Reads on the caller's thread when the image can without waiting for the device (the data is
    /// cached); false when it cannot, and the caller uses <see cref="ReadAsync"/>.
    /// </summary>
    public bool TryReadCached(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        return Image is IInlineIo inline && inline.TryReadCached(offset, buffer);
    }

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, maxLength);
        return Image.GetBlockStatusAsync(offset, maxLength, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => Image.FlushAsync(cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) =>
        WriteAsync(WriteRequest.ForData(offset, data, fua), cancellationToken);

    /// <summary>The write path every door uses.</summary>
    public ValueTask WriteAsync(WriteRequest request, CancellationToken cancellationToken = default) =>
        WriteCoreAsync(request, throughFilter: true, cancellationToken);

    /// <summary>
    /// The write path of the job that owns the node (a mirror writing its target): everything
    /// <see cref="WriteAsync(WriteRequest, CancellationToken)"/> does (the quiesce gate, the journal,
    /// the node's bitmaps) except the filter, which is the guard that refuses every other writer
    /// (QEMU: the job's own BlockBackend holds the write permission the others lack).
    /// </summary>
    internal ValueTask WriteAsOwnerAsync(WriteRequest request, CancellationToken cancellationToken = default) =>
        WriteCoreAsync(request, throughFilter: false, cancellationToken);

    /// <summary>
    /// The bitmap half of the owner's write path, for a range the owner rewrites without writing
    /// every byte of it (a full mirror's target, which QEMU zeroes first): every recording bitmap
    /// marks it, persistent ones through the journal, inside the quiesce gate like a write.
    /// </summary>
    internal async ValueTask MarkAsOwnerAsync(long offset, long length)
    {
        CheckRange(offset, length);
        if (length == 0)
            return;
        await QuiesceGate.EnterAsync().ConfigureAwait(false);
        try
        {
            await JournalAheadAsync(offset, length).ConfigureAwait(false);
            await MarkBitmapsAsync(offset, length).ConfigureAwait(false);
        }
        finally
        {
            QuiesceGate.Exit();
        }
    }

    // Pooled builder: the copy loop writes its target through here, and must not allocate per write.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCoreAsync(WriteRequest request, bool throughFilter, CancellationToken cancellationToken)
    {
        CheckRange(request.Offset, request.Length);
        // A copy offload may be refused, and only the node's owner copies the range otherwise.
        if (throughFilter && request.Kind == WriteKind.CopyRange)
            throw new ArgumentException("A copy offload is an owner's write", nameof(request));
        if (ReadOnly)
            throw BlockErrors.NodeReadOnly(Name);
        if (_imageReplaced is { } replaced)
            throw BlockErrors.ImageReplaced(Name, replaced);
        if (request.Length == 0)
            return;

        await QuiesceGate.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var filter = throughFilter ? _filter : null;
            if (filter is not null)
                await filter.WriteAsync(this, request, cancellationToken).ConfigureAwait(false);
            else
                await ApplyAndMarkAsync(request, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            QuiesceGate.Exit();
        }
    }

    /// <summary>
    /// Journals the range ahead for the persistent bitmaps, applies the request to the image, then
    /// marks every recording bitmap over its range, whether the image succeeded or not (QEMU's
    /// bdrv_co_write_req_finish): a write, zero write or discard that fails may have changed any
    /// byte of its range first (a short write on a full file system, a punch that freed some
    /// blocks), and a bitmap that missed it would let an incremental backup or a mirror skip bytes
    /// that differ. The write-ahead already covers the range, so after a failure the persistent
    /// bitmaps need no further I/O. Filters call this to pass a request down (the node's gate held).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ApplyAndMarkAsync(WriteRequest request, CancellationToken cancellationToken = default)
    {
        // A request refused before this point (the target guard) journals nothing and marks nothing.
        await JournalAheadAsync(request.Offset, request.Length).ConfigureAwait(false);
        try
        {
            await ApplyToImageAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await MarkAfterFailureAsync(request.Offset, request.Length).ConfigureAwait(false);
            throw;
        }
        await MarkBitmapsAsync(request.Offset, request.Length).ConfigureAwait(false);
    }

    private ValueTask ApplyToImageAsync(WriteRequest request, CancellationToken cancellationToken)
    {
        var image = Image;
        if (request is { OnCallerThread: true, Kind: WriteKind.Write, Fua: false } && image is IInlineIo inline
            && inline.TryWriteInline(request.Offset, request.Data.Span))
            return ValueTask.CompletedTask;
        return request.Kind switch
        {
            WriteKind.Write => image.WriteAsync(request.Offset, request.Data, request.Fua, cancellationToken),
            WriteKind.WriteZeroes => image.WriteZeroesAsync(request.Offset, request.Length, request.MayUnmap, cancellationToken),
            WriteKind.CopyRange => CopyRangeToImageAsync(image, request, cancellationToken),
            _ => image.DiscardAsync(request.Offset, request.Length, cancellationToken),
        };
    }

    /// <summary>A copy offload: the image copies from the request's source, or refuses and the owner copies otherwise.</summary>
    private static ValueTask CopyRangeToImageAsync(IBlockImage image, WriteRequest request, CancellationToken cancellationToken)
    {
        if (image is ICopyRangeTarget target && request.CopySource is { } source)
            return target.CopyRangeFromAsync(source, request.Offset, request.Length, request.RefuseLeadingZeroes, cancellationToken);
        return ValueTask.FromException(new CopyRangeRefusedException($"'{image.Location}' cannot copy from another image", permanent: true));
    }

    /// <summary>
    /// Marks the bitmaps after a failed request. The caller reports the request's own error: a
    /// journal failure here (the write-ahead made the range durable, so normally there is no I/O)
    /// must not replace it.
    /// </summary>
    private async ValueTask MarkAfterFailureAsync(long offset, long length)
    {
        try
        {
            await MarkBitmapsAsync(offset, length).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The in-memory marks are made before any journal call; the request's error is what counts.
        }
    }

    /// <summary>
    /// Write-ahead for every recording persistent bitmap: the range is durable in the journal before
    /// the image changes. Bitmaps whose range is already durable cost a bit test; the others share one
    /// group commit (their appends are issued together, then awaited).
    /// </summary>
    private ValueTask JournalAheadAsync(long offset, long length)
    {
        if (EnsureBitmapRangeDurable is not { } journal)
            return ValueTask.CompletedTask;
        ValueTask first = default;
        var waiting = false;
        List<Task>? more = null;
        foreach (var bitmap in Volatile.Read(ref _bitmaps))
        {
            if (!bitmap.Persistent || !bitmap.Recording)
                continue;
            var durable = journal(this, bitmap, offset, length);
            if (durable.IsCompletedSuccessfully)
                continue;
            if (!waiting)
            {
                first = durable;
                waiting = true;
            }
            else
            {
                (more ??= []).Add(durable.AsTask());
            }
        }
        if (!waiting)
            return ValueTask.CompletedTask;
        return more is null ? first : AwaitAllAsync(first, more);
    }

    private static ValueTask AwaitAllAsync(ValueTask first, List<Task> more)
    {
        // Awaited together, so a failure of one never leaves another's unobserved.
        more.Add(first.AsTask());
        return new ValueTask(Task.WhenAll(more));
    }

    private ValueTask MarkBitmapsAsync(long offset, long length)
    {
        var bitmaps = Volatile.Read(ref _bitmaps);
        Func<BlockNode, DirtyBitmap, long, long, ValueTask>? journal = null;
        DirtyBitmap? journalFor = null;
        List<DirtyBitmap>? more = null;
        foreach (var bitmap in bitmaps)
        {
            if (!bitmap.Recording)
                continue;
            var newly = bitmap.MarkDirty(offset, length);
            if (newly > 0 && bitmap.Persistent && EnsureBitmapRangeDurable is { } hook)
            {
                journal = hook;
                if (journalFor is null)
                    journalFor = bitmap;
                else
                    (more ??= []).Add(bitmap);
            }
        }
        if (journal is null)
            return ValueTask.CompletedTask;
        return JournalAsync(journal, journalFor!, more, offset, length);
    }

    private async ValueTask JournalAsync(Func<BlockNode, DirtyBitmap, long, long, ValueTask> journal, DirtyBitmap first, List<DirtyBitmap>? more, long offset, long length)
    {
        await journal(this, first, offset, length).ConfigureAwait(false);
        if (more is not null)
        {
            foreach (var b in more)
                await journal(this, b, offset, length).ConfigureAwait(false);
        }
    }
}
