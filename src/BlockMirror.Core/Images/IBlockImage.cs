namespace BlockMirror.Core.Images;

/// <summary>
/// A block image: a fixed-size byte array with positional I/O and block status.
/// Implementations are thread-safe for concurrent positional operations (no shared
/// stream position). Ranges are validated by the caller (the node); an image may
/// assume <c>offset + length &lt;= Size</c>.
/// </summary>
public interface IBlockImage : IAsyncDisposable
{
    /// <summary>Virtual size in bytes.</summary>
    long Size { get; }

    /// <summary>True when opened without write access.</summary>
    bool ReadOnly { get; }

    /// <summary>Where the image lives: a path relative to nothing in particular, or a URI; for diagnostics.</summary>
    string Location { get; }

    /// <summary>Reads exactly <c>buffer.Length</c> bytes at <paramref name="offset"/> (holes read as zero).</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>Writes all of <paramref name="data"/>; with <paramref name="fua"/> the data is durable on return.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default);

    /// <summary>Makes the range read as zeroes; with <paramref name="mayUnmap"/> it may be deallocated (punched).</summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default);

    /// <summary>Advisory deallocation; afterwards the range reads as zeroes for raw files.</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable (fsync).</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Block status of the range starting at <paramref name="offset"/>: one extent that starts at
    /// <paramref name="offset"/>, has one kind, and is at most <paramref name="maxLength"/> long.
    /// </summary>
    ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default);

    /// <summary>Bytes the image occupies on its storage (st_blocks × 512 for a file).</summary>
    long AllocatedBytes { get; }

    /// <summary>True when a freshly created image of this kind reads as all zeroes (a sparse file does).</summary>
    bool HasZeroInit { get; }

    /// <summary>
    /// Opened with O_DIRECT (QEMU's <c>cache.direct</c>): I/O bypasses the host's page cache. Only
    /// raw files and host block devices can be; a node's record keeps it so a restart reopens the same way.
    /// </summary>
    bool CacheDirect => false;
}
