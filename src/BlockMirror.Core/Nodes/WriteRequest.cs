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

    public static WriteRequest ForData(long offset, ReadOnlyMemory<byte> data, bool fua = false) =>
        new(WriteKind.Write, offset, data.Length, data, fua);

    public static WriteRequest ForZeroes(long offset, long length, bool mayUnmap, bool fua = false) =>
        new(WriteKind.WriteZeroes, offset, length, ReadOnlyMemory<byte>.Empty, fua, mayUnmap);

    public static WriteRequest ForDiscard(long offset, long length) =>
        new(WriteKind.Discard, offset, length, ReadOnlyMemory<byte>.Empty);
}
