namespace BlockMirror.Core.Nodes;

/// <summary>One content-changing request on a node's write path, from any door (HTTP, NBD).</summary>
public readonly record struct WriteRequest(
    WriteKind Kind,
    long Offset,
    long Length,
    ReadOnlyMemory<byte> Data,
    bool Fua = false,
    bool MayUnmap = true)
{
    public long End => Offset + Length;

    public static WriteRequest ForData(long offset, ReadOnlyMemory<byte> data, bool fua = false) =>
        new(WriteKind.Write, offset, data.Length, data, fua);

    public static WriteRequest ForZeroes(long offset, long length, bool mayUnmap, bool fua = false) =>
        new(WriteKind.WriteZeroes, offset, length, ReadOnlyMemory<byte>.Empty, fua, mayUnmap);

    public static WriteRequest ForDiscard(long offset, long length) =>
        new(WriteKind.Discard, offset, length, ReadOnlyMemory<byte>.Empty);
}
