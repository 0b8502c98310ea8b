using System.Buffers;
using System.Numerics;

namespace BlockMirror.Core.Bitmaps;

/// <summary>
/// A dirty bitmap of a node (QEMU's <c>BdrvDirtyBitmap</c>): one bit per
/// <see cref="Granularity"/> bytes of a node of <see cref="Size"/> bytes, plus the state
/// flags QMP reports and checks. Byte ranges are rounded to granules here so callers only
/// ever speak bytes.
/// </summary>
/// <remarks>
/// Thread-safe: every member takes one internal lock, because writes on many threads mark
/// the bitmap while jobs and the API read and clear it. <see cref="Count"/> and
/// <see cref="DirtyGranules"/> are published after each change and read without the lock
/// so status queries never wait behind a large merge. <see cref="MarkDirty"/> marks
/// unconditionally; whether a disabled bitmap records writes is the owning node's decision.
/// </remarks>
public sealed class DirtyBitmap
{
    /// <summary>Granularity used when the caller gives none and the node suggests none.</summary>
    public const int DefaultGranularity = 65536;

    private const long MinGranularity = 512;
    private const long MaxGranularity = 1L << 31;

    /// <summary>Merge buffers up to this many words (8 MiB) are borrowed from the shared pool.</summary>
    private const int PooledMergeWords = 1 << 20;

    private readonly Lock _lock = new();
    private readonly HBitmap _bits;
    private readonly int _shift;
    private readonly long _granules;

    // Bytes in the last granule (equal to Granularity unless Size is not a multiple of it).
    private readonly long _lastGranuleBytes;

    private long _countBytes;
    private long _dirtyGranules;
    private bool _disabled;
    private bool _busy;
    private bool _readOnly;
    private bool _persistent;
    private bool _inconsistent;
    private string? _inconsistentReason;

    /// <summary>Creates an all-clean bitmap.</summary>
    /// <exception cref="ArgumentException">Granularity is not a power of two of at least 512.</exception>
    /// <exception cref="BlockException"><c>bitmap-too-large</c>: more granules than a bitmap can hold.</exception>
    public DirtyBitmap(string name, long size, long granularity, bool persistent = false, bool disabled = false)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        if (!IsValidGranularity(granularity))
        {
            throw new ArgumentException($"Granularity must be power of 2 and at least 512, got {granularity}", nameof(granularity));
        }

        Name = name;
        Size = size;
        Granularity = granularity;
        _shift = BitOperations.Log2((ulong)granularity);
        _granules = (size >> _shift) + ((size & (granularity - 1)) != 0 ? 1 : 0);
        if (_granules > HBitmap.MaxLength)
            // The last guard (BlockLayer.CheckBitmapSize refuses earlier, naming a granularity that fits).
            throw BlockErrors.BitmapTooLarge($"A bitmap with granularity {granularity} on a node of {size} bytes would have {_granules} granules, more than the {HBitmap.MaxLength} supported");
        _lastGranuleBytes = _granules == 0 ? 0 : size - ((_granules - 1) << _shift);
        _bits = new HBitmap(_granules);
        _persistent = persistent;
        _disabled = disabled;
    }

    /// <summary>Bitmap name, unique per node.</summary>
    public string Name { get; }

    /// <summary>Node size in bytes the bitmap covers.</summary>
    public long Size { get; }

    /// <summary>Bytes per bit.</summary>
    public long Granularity { get; }

    /// <summary>Whether the bitmap is disabled (does not record writes).</summary>
    public bool Disabled
    {
        get { lock (_lock) { return _disabled; } }
        set { lock (_lock) { _disabled = value; } }
    }

    /// <summary>QMP's <c>recording</c>: the bitmap tracks new writes.</summary>
    public bool Recording => !Disabled;

    /// <summary>In use by a job or export; other operations must refuse it.</summary>
    public bool Busy
    {
        get { lock (_lock) { return _busy; } }
        set { lock (_lock) { _busy = value; } }
    }

    /// <summary>Loaded from a read-only image: cannot be modified.</summary>
    public bool ReadOnly
    {
        get { lock (_lock) { return _readOnly; } }
        set { lock (_lock) { _readOnly = value; } }
    }

    /// <summary>Stored in the image on close.</summary>
    public bool Persistent
    {
        get { lock (_lock) { return _persistent; } }
        set { lock (_lock) { _persistent = value; } }
    }

    /// <summary>Left in use by an unclean shutdown; only removal is allowed.</summary>
    public bool Inconsistent
    {
        get { lock (_lock) { return _inconsistent; } }
        set { lock (_lock) { _inconsistent = value; } }
    }

    /// <summary>Why the bitmap is <see cref="Inconsistent"/> (API.md v1.1 <c>inconsistentReason</c>); null when it is not, or no reason is known.</summary>
    public string? InconsistentReason
    {
        get { lock (_lock) { return _inconsistent ? _inconsistentReason : null; } }
        set { lock (_lock) { _inconsistentReason = value; } }
    }

    /// <summary>Marks the bitmap inconsistent with <paramref name="reason"/>; a reason already given is kept (the first cause is the one to fix).</summary>
    public void MarkInconsistent(string reason)
    {
        lock (_lock)
        {
            if (!_inconsistent || _inconsistentReason is null)
                _inconsistentReason = reason;
            _inconsistent = true;
        }
    }

    /// <summary>When the bitmap was added (orders a node's bitmaps across restarts).</summary>
    public DateTime CreatedAt { get; init; } = DateTime.UtcNow;

    /// <summary>
    /// Dirty bytes: dirty granules × granularity, with a partial last granule counted only
    /// up to <see cref="Size"/> (so a fully dirty bitmap reports exactly Size). Lock-free.
    /// </summary>
    public long Count => Volatile.Read(ref _countBytes);

    /// <summary>Number of dirty granules (set bits). Lock-free.</summary>
    public long DirtyGranules => Volatile.Read(ref _dirtyGranules);

    /// <summary>Granules (bits) of a bitmap of <paramref name="granularity"/> over <paramref name="size"/> bytes.</summary>
    public static long GranulesFor(long size, long granularity)
    {
        int shift = BitOperations.Log2((ulong)granularity);
        return (size >> shift) + ((size & (granularity - 1)) != 0 ? 1 : 0);
    }

    /// <summary>Bytes of memory a bitmap of <paramref name="granules"/> bits takes (budgets count this).</summary>
    public static long MemoryBytesFor(long granules) => HBitmap.MemoryBytesFor(granules);

    /// <summary>Bytes of the serialized form (a checkpoint's content) of a bitmap of <paramref name="granules"/> bits.</summary>
    public static long SerializedBytesFor(long granules) => HBitmap.SerializedLengthFor(granules);

    /// <summary>Bytes of memory this bitmap's bits take.</summary>
    public long MemoryBytes => MemoryBytesFor(_granules);

    /// <summary>Bytes of this bitmap's serialized form.</summary>
    public long SerializedBytes => SerializedBytesFor(_granules);

    /// <summary>True for a power of two in [512, 2^31].</summary>
    public static bool IsValidGranularity(long g) =>
        g >= MinGranularity && g <= MaxGranularity && (g & (g - 1)) == 0;

    /// <summary>
    /// QEMU's <c>bdrv_dirty_bitmap_check</c>: tests busy, then read-only, then inconsistent,
    /// and throws the first refusal that <paramref name="flags"/> asks for.
    /// </summary>
    public void Check(BitmapCheck flags)
    {
        lock (_lock)
        {
            if ((flags & BitmapCheck.Busy) != 0 && _busy)
            {
                throw BlockErrors.BitmapBusy(Name);
            }

            if ((flags & BitmapCheck.ReadOnly) != 0 && _readOnly)
            {
                throw BlockErrors.BitmapReadOnly(Name);
            }

            if ((flags & BitmapCheck.Inconsistent) != 0 && _inconsistent)
            {
                throw BlockErrors.BitmapInconsistent(Name);
            }
        }
    }

    /// <summary>
    /// Marks [offset, offset+length) dirty, rounded outward to granules, and returns how many
    /// granules were newly dirtied. Allocation-free (the write path calls it per request).
    /// </summary>
    public long MarkDirty(long offset, long length)
    {
        ValidateByteRange(offset, length);
        if (length == 0)
        {
            return 0;
        }

        long first = offset >> _shift;
        long last = (offset + length - 1) >> _shift;
        lock (_lock)
        {
            long added = _bits.SetCountNew(first, last - first + 1);
            if (added != 0)
            {
                PublishCountBitmapLocked();
            }

            return added;
        }
    }

    /// <summary>
    /// Clears the granules fully covered by [offset, offset+length). A partial last granule
    /// counts as covered when the range reaches <see cref="Size"/>, because no byte of it
    /// lies outside the range. Partially covered granules stay dirty so no write is lost.
    /// </summary>
    public void ClearDirty(long offset, long length)
    {
        ValidateByteRange(offset, length);
        long end = offset + length;
        long first = CeilGranule(offset);
        long stop = end == Size ? _granules : end >> _shift;
        if (stop <= first)
        {
            return;
        }

        lock (_lock)
        {
            _bits.Reset(first, stop - first);
            PublishCountBitmapLocked();
        }
    }

    /// <summary>Marks the whole node dirty.</summary>
    public void MarkAll()
    {
        lock (_lock)
        {
            _bits.SetAll();
            PublishCountBitmapLocked();
        }
    }

    /// <summary>Clears every granule.</summary>
    public void Clear()
    {
        lock (_lock)
        {
            _bits.ResetAll();
            PublishCountBitmapLocked();
        }
    }

    /// <summary>Whether the granule holding byte <paramref name="offset"/> is dirty.</summary>
    public bool IsDirty(long offset)
    {
        if ((ulong)offset >= (ulong)Size)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"Offset must be in [0, {Size})");
        }

        lock (_lock)
        {
            return _bits.Get(offset >> _shift);
        }
    }

    /// <summary>
    /// First run of dirty granules at or after the granule holding
    /// <paramref name="fromOffset"/> (so <paramref name="offset"/> is granule-aligned and may
    /// precede <paramref name="fromOffset"/>). The run is at most
    /// max(<paramref name="maxLength"/> rounded down to granules, one granule) long, and is
    /// clipped at <see cref="Size"/>.
    /// </summary>
    public bool NextDirtyRun(long fromOffset, long maxLength, out long offset, out long length)
    {
        if ((ulong)fromOffset > (ulong)Size)
        {
            throw new ArgumentOutOfRangeException(nameof(fromOffset), fromOffset, $"Offset must be in [0, {Size}]");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        long maxGranules = Math.Max(1, maxLength >> _shift);
        long fromGranule = fromOffset >> _shift;
        if (fromOffset == Size)
        {
            // Size itself may fall inside a partial last granule; nothing lies at or after it.
            offset = -1;
            length = 0;
            return false;
        }

        long start;
        long count;
        lock (_lock)
        {
            if (!_bits.NextSetRun(fromGranule, maxGranules, out start, out count))
            {
                offset = -1;
                length = 0;
                return false;
            }
        }

        offset = start << _shift;
        length = Math.Min(count << _shift, Size - offset);
        return true;
    }

    /// <summary>
    /// Coalesced dirty ranges intersecting [offset, offset+length), clipped to it, in order.
    /// </summary>
    public List<(long Offset, long Length)> GetExtents(long offset, long length)
    {
        ValidateByteRange(offset, length);
        var result = new List<(long Offset, long Length)>();
        if (length == 0)
        {
            return result;
        }

        long end = offset + length;
        long endGranule = CeilGranule(end);
        lock (_lock)
        {
            long pos = offset >> _shift;
            while (true)
            {
                long s = _bits.FindSet(pos, endGranule);
                if (s == endGranule)
                {
                    break;
                }

                // FindClear gives the end of a maximal run, so adjacent runs never need merging.
                long e = _bits.FindClear(s, endGranule);
                long from = Math.Max(s << _shift, offset);
                long to = Math.Min(e << _shift, end);
                result.Add((from, to - from));
                pos = e;
            }
        }

        return result;
    }

    /// <summary>
    /// The first extent starting exactly at <paramref name="offset"/>: the longest prefix of
    /// [offset, offset+length) that is uniformly dirty or uniformly clean (NBD block status).
    /// Returns false for an empty range.
    /// </summary>
    public bool TryGetFirstExtent(long offset, long length, out long extOffset, out long extLength, out bool dirty)
    {
        ValidateByteRange(offset, length);
        if (length == 0)
        {
            extOffset = offset;
            extLength = 0;
            dirty = false;
            return false;
        }

        long end = offset + length;
        long endGranule = CeilGranule(end);
        long g = offset >> _shift;
        long runEnd;
        lock (_lock)
        {
            dirty = _bits.Get(g);
            runEnd = dirty ? _bits.FindClear(g, endGranule) : _bits.FindSet(g, endGranule);
        }

        extOffset = offset;
        extLength = Math.Min(runEnd << _shift, end) - offset;
        return true;
    }

    /// <summary>
    /// ORs <paramref name="source"/> into this bitmap. Equal granularities OR the words;
    /// otherwise every dirty source granule dirties every target granule it touches, so a
    /// merge never loses a dirty byte. Merging a bitmap into itself does nothing.
    /// </summary>
    /// <exception cref="BlockException">The sizes differ (<c>size-mismatch</c>).</exception>
    public void MergeFrom(DirtyBitmap source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (ReferenceEquals(source, this))
        {
            return;
        }

        if (source.Size != Size)
        {
            throw BlockErrors.SizeMismatch(Size, source.Size);
        }

        // Copy the source under its own lock, then mutate under ours: never holding both
        // locks means two opposite merges cannot deadlock.
        if (source.Granularity == Granularity)
        {
            // Same shape: snapshot only the last-level words into a pooled buffer. Cloning
            // would allocate a fresh 2 MiB (1 TiB @ 64 KiB) per merge on the large object
            // heap, which alone cost more than the 2 ms budget once gen2 collections followed.
            int words = _bits.WordCount;
            // Past PooledMergeWords the buffer is a plain allocation: the shared pool keeps what it
            // lends, so every 256 MiB merge (1 TiB @ 512 B) would stay in the process for good,
            // outside the bitmap memory budget.
            bool pooled = words <= PooledMergeWords;
            ulong[] buffer = pooled ? ArrayPool<ulong>.Shared.Rent(words) : GC.AllocateUninitializedArray<ulong>(words);
            try
            {
                lock (source._lock)
                {
                    source._bits.CopyWordsTo(buffer);
                }

                lock (_lock)
                {
                    _bits.OrWords(buffer.AsSpan(0, words));
                    PublishCountBitmapLocked();
                }
            }
            finally
            {
                if (pooled)
                {
                    ArrayPool<ulong>.Shared.Return(buffer);
                }
            }

            return;
        }

        // Different granularity: walk the source's dirty runs, which wants the hierarchy.
        HBitmap snapshot = source.SnapshotBits();
        lock (_lock)
        {
            int sourceShift = source._shift;
            long pos = 0;
            while (snapshot.NextSetRun(pos, long.MaxValue, out long s, out long c))
            {
                // A dirty source granule dirties every target granule it touches.
                long byteStart = s << sourceShift;
                long byteEnd = Math.Min((s + c) << sourceShift, Size);
                long first = byteStart >> _shift;
                long last = (byteEnd - 1) >> _shift;
                _bits.Set(first, last - first + 1);
                pos = s + c;
            }

            PublishCountBitmapLocked();
        }
    }

    /// <summary>A copy of the bits (e.g. a transaction's backup before clear or merge).</summary>
    public HBitmap SnapshotBits()
    {
        lock (_lock)
        {
            return _bits.Clone();
        }
    }

    /// <summary>Replaces the bits with a copy of <paramref name="bits"/> (transaction abort).</summary>
    /// <exception cref="ArgumentException">The length is not this bitmap's granule count.</exception>
    public void RestoreBits(HBitmap bits)
    {
        ArgumentNullException.ThrowIfNull(bits);
        lock (_lock)
        {
            _bits.CopyFrom(bits);
            PublishCountBitmapLocked();
        }
    }

    /// <summary>The last-level words, little-endian (see <see cref="HBitmap.Serialize"/>).</summary>
    public byte[] Serialize()
    {
        lock (_lock)
        {
            var data = new byte[_bits.SerializedLength];
            _bits.Serialize(data);
            return data;
        }
    }

    /// <summary>Replaces the content with serialized bits of the same granule count.</summary>
    /// <exception cref="ArgumentException">The data has the wrong length.</exception>
    public void Deserialize(ReadOnlySpan<byte> data)
    {
        // Decode outside the lock; only the copy-in needs it.
        HBitmap loaded = HBitmap.Deserialize(_granules, data);
        lock (_lock)
        {
            _bits.CopyFrom(loaded);
            PublishCountBitmapLocked();
        }
    }

    /// <summary>Lowercase hex SHA-256 over the serialized bits.</summary>
    public string Sha256Hex()
    {
        lock (_lock)
        {
            return _bits.Sha256Hex();
        }
    }

    /// <summary>Recomputes the lock-free counters; caller holds the lock.</summary>
    private void PublishCountBitmapLocked()
    {
        long granules = _bits.Count;
        long bytes = granules << _shift;
        if (granules != 0 && _bits.Get(_granules - 1))
        {
            bytes -= Granularity - _lastGranuleBytes;
        }

        Volatile.Write(ref _dirtyGranules, granules);
        Volatile.Write(ref _countBytes, bytes);
    }

    private long CeilGranule(long offset) =>
        (offset >> _shift) + ((offset & (Granularity - 1)) != 0 ? 1 : 0);

    private void ValidateByteRange(long offset, long length)
    {
        if ((ulong)offset > (ulong)Size)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"Offset must be in [0, {Size}]");
        }

        if ((ulong)length > (ulong)(Size - offset))
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"Range [{offset}, +{length}) exceeds size {Size}");
        }
    }
}
