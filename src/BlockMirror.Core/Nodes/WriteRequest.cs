using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>One content-changing request on a node's write path, from any door (HTTP, NBD).</summary>
/// <param name="OnCallerThread">
/// The caller has a thread of its own to spend (an NBD connection's): a small data write may be
/// done on it (<see cref="Images.IInlineIo"/>) instead of on the thread pool. Changes nothing else.
/// </param>
public readonly record struct WriteRequest(
    WriteKind Kind,
    long Offset,
    long Length,
    ReadOnlyMemory<byte> Data,
    bool Fua = false,
    bool MayUnmap = true,
    bool OnCallerThread = false)
{
    public long End => Offset + Length;

    /// <summary>The image a <see cref="WriteKind.CopyRange"/> copies from, at the same offset.</summary>
    public IBlockImage? CopySource { get; init; }

    /// <summary>
    /// A <see cref="WriteKind.CopyRange"/> is refused (<see cref="CopyRangeRefusedException"/>, not
    /// permanent) when the source range starts with a block of zeroes, so that its owner can write
    /// zeroes there instead of allocating them (zero detection). The look is made by the copy itself,
    /// on the same thread, instead of by a read of its own before it.
    /// </summary>
    public bool RefuseLeadingZeroes { get; init; }

    public static WriteRequest ForData(long offset, ReadOnlyMemory<byte> data, bool fua = false) =>
        new(WriteKind.Write, offset, data.Length, data, fua);

    public static WriteRequest ForZeroes(long offset, long length, bool mayUnmap, bool fua = false) =>
        new(WriteKind.WriteZeroes, offset, length, ReadOnlyMemory<byte>.Empty, fua, mayUnmap);

    /// <summary>
    /// Copy [offset, +length) of <paramref name="source"/> to the same range (copy offload). Only a
    /// node's owner writes these: the image may refuse (<see cref="CopyRangeRefusedException"/>), and
    /// only a job knows how to copy the range otherwise.
    /// </summary>
    internal static WriteRequest ForCopy(long offset, long length, IBlockImage source, bool refuseLeadingZeroes = false) =>
        new(WriteKind.CopyRange, offset, length, ReadOnlyMemory<byte>.Empty) { CopySource = source, RefuseLeadingZeroes = refuseLeadingZeroes };

    public static WriteRequest ForDiscard(long offset, long length) =>
        new(WriteKind.Discard, offset, length, ReadOnlyMemory<byte>.Empty);
}
