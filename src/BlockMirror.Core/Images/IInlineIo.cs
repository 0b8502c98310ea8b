namespace BlockMirror.Core.Images;

/// <summary>
/// An image that can do small I/O on the caller's own thread, for a caller that has a thread to
/// spend and would otherwise hand each request to the thread pool and wait for it there (an NBD
/// connection's thread): at 4 KiB that hop costs more than the pread or pwrite itself. Neither
/// method waits for the device: a read succeeds only when all of it is in the page cache, a write
/// only when it can be issued at once; false means "use the asynchronous method", never an error.
/// </summary>
public interface IInlineIo
{
    /// <summary>
    /// Reads all of <paramref name="buffer"/> at <paramref name="offset"/> if that needs no device
    /// I/O (holes read as zeroes); false, with the buffer's content undefined, when it would wait.
    /// </summary>
    bool TryReadCached(long offset, Span<byte> buffer);

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/> (a buffered write, not durable)
    /// unless another write holds the image's turn, then false and nothing was written. A failed
    /// write throws as the asynchronous write would.
    /// </summary>
    bool TryWriteInline(long offset, ReadOnlySpan<byte> data);
}
