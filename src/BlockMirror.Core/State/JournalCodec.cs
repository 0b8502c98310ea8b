using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Core.State;

/// <summary>
/// The on-disk form of a journal segment: a 16-byte header (magic, base sequence) then records
/// <c>crc32c:u32 | length:u16 | kind:u8 | nodeLength:u8 | sequence:u64 | first:i64 | count:i64 |
/// bitmapLength:u8 | node | bitmap</c>, little-endian, names in UTF-8 (API names are at most 128
/// ASCII characters). The checksum covers everything after itself, so a record torn by a crash
/// in the middle of a write is recognised and ends the segment's valid prefix.
/// </summary>
internal static class JournalCodec
{
    public const int HeaderLength = 16;
    private const int FixedLength = 33;
    private const byte KindMark = 1;
    private static readonly byte[] Magic = "BMJRNL01"u8.ToArray();

    public static void WriteHeader(Span<byte> destination, long baseSequence)
    {
        Magic.CopyTo(destination);
        BinaryPrimitives.WriteInt64LittleEndian(destination[8..], baseSequence);
    }

    /// <summary>The base sequence of a segment, or null when the header is not ours.</summary>
    public static long? ReadHeader(ReadOnlySpan<byte> source)
    {
        if (source.Length < HeaderLength || !source[..8].SequenceEqual(Magic))
            return null;
        return BinaryPrimitives.ReadInt64LittleEndian(source[8..]);
    }

    public static int EncodedLength(in JournalEntry entry) =>
        FixedLength + Encoding.UTF8.GetByteCount(entry.Node) + Encoding.UTF8.GetByteCount(entry.Bitmap);

    /// <summary>Writes one record; returns its length.</summary>
    public static int Encode(in JournalEntry entry, Span<byte> destination)
    {
        var nodeLength = Encoding.UTF8.GetBytes(entry.Node, destination[FixedLength..]);
        var bitmapLength = Encoding.UTF8.GetBytes(entry.Bitmap, destination[(FixedLength + nodeLength)..]);
        if (nodeLength > byte.MaxValue || bitmapLength > byte.MaxValue)
            throw new ArgumentException("A node or bitmap name is too long for the journal", nameof(entry));
        var length = FixedLength + nodeLength + bitmapLength;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[4..], (ushort)length);
        destination[6] = KindMark;
        destination[7] = (byte)nodeLength;
        BinaryPrimitives.WriteInt64LittleEndian(destination[8..], entry.Sequence);
        BinaryPrimitives.WriteInt64LittleEndian(destination[16..], entry.FirstGranule);
        BinaryPrimitives.WriteInt64LittleEndian(destination[24..], entry.GranuleCount);
        destination[32] = (byte)bitmapLength;
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Crc32C.Compute(destination[4..length]));
        return length;
    }

    /// <summary>
    /// Decodes the valid prefix of a segment's records (after the header): stops at the first record
    /// that is short, fails its checksum, or does not follow the previous one's sequence.
    /// </summary>
    public static void DecodeAll(ReadOnlySpan<byte> records, long baseSequence, List<JournalEntry> into)
    {
        var previous = baseSequence - 1;
        while (records.Length >= FixedLength)
        {
            int length = BinaryPrimitives.ReadUInt16LittleEndian(records[4..]);
            if (length < FixedLength || length > records.Length)
                return;
            var record = records[..length];
            if (BinaryPrimitives.ReadUInt32LittleEndian(record) != Crc32C.Compute(record[4..]) || record[6] != KindMark)
                return;
            int nodeLength = record[7];
            int bitmapLength = record[32];
            var sequence = BinaryPrimitives.ReadInt64LittleEndian(record[8..]);
            var first = BinaryPrimitives.ReadInt64LittleEndian(record[16..]);
            var count = BinaryPrimitives.ReadInt64LittleEndian(record[24..]);
            if (FixedLength + nodeLength + bitmapLength != length || sequence <= previous || first < 0 || count <= 0)
                return;
            var node = Encoding.UTF8.GetString(record.Slice(FixedLength, nodeLength));
            var bitmap = Encoding.UTF8.GetString(record.Slice(FixedLength + nodeLength, bitmapLength));
            into.Add(new JournalEntry(sequence, node, bitmap, first, count));
            previous = sequence;
            records = records[length..];
        }
    }
}
