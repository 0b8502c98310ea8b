using System.Buffers.Binary;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// Blocks that name the operation that wrote them (the kill -9 tests): operation id and block number,
/// then bytes only that pair makes, so a block read back after a kill is known to be intact, zeroes,
/// or neither (torn, or another block's bytes).
/// </summary>
internal static class TaggedBlocks
{
    /// <summary><paramref name="count"/> blocks from block <paramref name="first"/>, written by operation <paramref name="id"/>.</summary>
    public static byte[] Content(long id, int first, int count, int blockSize)
    {
        var data = new byte[count * blockSize];
        for (var b = 0; b < count; b++)
            Fill(data.AsSpan(b * blockSize, blockSize), id, first + b);
        return data;
    }

    public static void Fill(Span<byte> block, long id, long index)
    {
        BinaryPrimitives.WriteInt64LittleEndian(block, id);
        BinaryPrimitives.WriteInt64LittleEndian(block[8..], index);
        var x = (ulong)((id * 1_000_003) + index) | 1;
        for (var i = 16; i + 8 <= block.Length; i += 8)
        {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            BinaryPrimitives.WriteUInt64LittleEndian(block[i..], x);
        }
    }

    /// <summary>Which operation wrote this block: its id, 0 for zeroes, -1 for anything else (a torn or foreign block).</summary>
    public static long Identify(ReadOnlySpan<byte> block, long index)
    {
        if (!block.ContainsAnyExcept((byte)0))
            return 0;
        var id = BinaryPrimitives.ReadInt64LittleEndian(block);
        if (id <= 0 || BinaryPrimitives.ReadInt64LittleEndian(block[8..]) != index)
            return -1;
        Span<byte> expected = stackalloc byte[block.Length];
        Fill(expected, id, index);
        return expected.SequenceEqual(block) ? id : -1;
    }

    /// <summary>What a block that is not what it should be holds instead: the id and index it names, and where it stops matching them.</summary>
    public static string Describe(ReadOnlySpan<byte> block, long index)
    {
        var id = BinaryPrimitives.ReadInt64LittleEndian(block);
        var named = BinaryPrimitives.ReadInt64LittleEndian(block[8..]);
        var text = $"names operation {id} block {named} (this is block {index}), non-zero bytes {block.IndexOfAnyExcept((byte)0)}..{block.LastIndexOfAnyExcept((byte)0)}";
        if (id <= 0)
            return text;
        Span<byte> expected = stackalloc byte[block.Length];
        Fill(expected, id, named);
        var same = block.CommonPrefixLength(expected);
        return same == block.Length ? text + ", an intact block of that operation" : text + $", matching that block for {same} bytes";
    }
}
