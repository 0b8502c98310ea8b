using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>A read-only image over a byte array (a backing image): block status says zero for all-zero 4 KiB blocks.</summary>
internal sealed class MemoryBlockImage(byte[] content) : IBlockImage
{
    private const int Block = 4096;

    public long Size => content.LongLength;
    public bool ReadOnly => true;
    public string Location => "memory-backing";
    public long AllocatedBytes => content.LongLength;
    public bool HasZeroInit => false;

    public int Reads { get; private set; }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Reads++;
        content.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) =>
        throw new InvalidOperationException("read-only");

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default) =>
        throw new InvalidOperationException("read-only");

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        throw new InvalidOperationException("read-only");

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        var end = Math.Min(Size, offset + maxLength);
        var zero = IsZeroBlock(offset);
        var pos = offset;
        while (pos < end && IsZeroBlock(pos) == zero)
            pos = Math.Min(end, (pos / Block * Block) + Block);
        return ValueTask.FromResult(new ImageExtent(offset, pos - offset, zero ? ExtentKind.Zero : ExtentKind.Data));
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private bool IsZeroBlock(long pos)
    {
        var start = (int)(pos / Block * Block);
        var length = (int)Math.Min(Block, Size - start);
        return !content.AsSpan(start, length).ContainsAnyExcept((byte)0);
    }
}
