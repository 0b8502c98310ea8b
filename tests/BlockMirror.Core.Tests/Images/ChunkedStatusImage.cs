using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// A real image whose block status answers in pieces of at most <c>chunk</c> bytes, as a remote
/// (NBD) image may: lets the tests prove that <see cref="ImageExtents"/> merges adjacent pieces.
/// Everything else goes straight to the wrapped image.
/// </summary>
public sealed class ChunkedStatusImage(IBlockImage inner, long chunk) : IBlockImage
{
    public int StatusCalls { get; private set; }

    public long Size => inner.Size;
    public bool ReadOnly => inner.ReadOnly;
    public string Location => inner.Location;
    public long AllocatedBytes => inner.AllocatedBytes;
    public bool HasZeroInit => inner.HasZeroInit;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) =>
        inner.WriteAsync(offset, data, fua, cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default) =>
        inner.WriteZeroesAsync(offset, length, mayUnmap, cancellationToken);

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        inner.DiscardAsync(offset, length, cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        StatusCalls++;
        return inner.GetBlockStatusAsync(offset, Math.Min(maxLength, chunk), cancellationToken);
    }

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
