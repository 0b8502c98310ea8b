namespace BlockMirror.Core.Images;

/// <summary>
/// The last data region block status found in a file, as QEMU's block-status cache
/// (<c>bdrv_bsc_is_data</c> / <c>bdrv_bsc_fill</c> / <c>bdrv_bsc_invalidate_range</c>, which
/// QEMU keeps for protocol nodes only): a query that falls inside it is answered without asking
/// the kernel.
/// </summary>
/// <remarks>
/// Why: SEEK_HOLE is not always cheap. On ext4 (XFS shares the iomap code) data whose blocks
/// are still unwritten extents with dirty pages (a fallocated image after random writes, before
/// writeback) is found by walking the page cache folio by folio up to the next hole, which may
/// be the end of the file: 20 ms and more per call on a 1 GiB image; and lseek on one open file
/// serializes on its f_pos_lock, so every concurrent caller queues behind it (bench/README.md,
/// "NBD reads stalled after random writes"). The region is only ever data: plain writes cannot make it
/// wrong; zero writes and discards invalidate it. Reporting zeroes as data is always safe (a
/// reader gets the real bytes), so a writer outside this process can only make answers less
/// sparse, never wrong.
/// </remarks>
internal sealed class BlockStatusCache
{
    private readonly Lock _lock = new();
    private long _start;
    private long _end; // _start == _end: nothing cached
    private long _generation;

    /// <summary>Stamp to take before asking the kernel and to hand to <see cref="Fill"/>.</summary>
    public long Generation
    {
        get
        {
            lock (_lock)
                return _generation;
        }
    }

    /// <summary>True with the end of the cached data region when <paramref name="offset"/> lies in it.</summary>
    public bool TryGetData(long offset, out long dataEnd)
    {
        lock (_lock)
        {
            dataEnd = _end;
            return offset >= _start && offset < _end;
        }
    }

    /// <summary>
    /// Remembers [<paramref name="start"/>, <paramref name="end"/>) as data, unless an
    /// invalidation happened since <paramref name="generation"/> was taken: the kernel's answer
    /// may predate that zero write or discard. A region that overlaps or touches the cached one
    /// joins it (both are data), so concurrent misses widen the region instead of replacing it.
    /// </summary>
    public void Fill(long start, long end, long generation)
    {
        lock (_lock)
        {
            if (generation != _generation || end <= start)
                return;
            if (_start < _end && start <= _end && end >= _start)
            {
                start = Math.Min(start, _start);
                end = Math.Max(end, _end);
            }
            _start = start;
            _end = end;
        }
    }

    /// <summary>
    /// Before and after anything that may turn data into zeroes or holes: forgets the region if it
    /// overlaps the range, and voids every answer the kernel gave before this call.
    /// </summary>
    public void Invalidate(long offset, long length)
    {
        lock (_lock)
        {
            _generation++;
            if (offset < _end && offset + length > _start)
                _start = _end = 0;
        }
    }
}
