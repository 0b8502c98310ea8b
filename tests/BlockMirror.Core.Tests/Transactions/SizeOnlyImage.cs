using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Transactions;

/// <summary>
/// An image that is only a size (reads zeroes, takes writes and forgets them): a node of 1 EiB or
/// 8 TiB for the bitmap limits, without a file of that size.
/// </summary>
public sealed class SizeOnlyImage(long size) : IBlockImage
{
    public long Size => size;

    public bool ReadOnly => false;

    public string Location => $"size-only:{size}";

    public long AllocatedBytes => 0;

    public bool HasZeroInit => true;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        buffer.Span.Clear();
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(new ImageExtent(offset, Math.Min(maxLength, size - offset), ExtentKind.Zero));

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
