using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Core.State;

/// <summary>
/// The on-disk form of a journal segment: a header (magic, base sequence and, since version 2, the
/// last sequence the journal had made durable when the segment was opened) then records
/// <c>crc32c:u32 | length:u16 | kind:u8 (<see cref="JournalEntryKind"/>; journals before the activity log hold kind 1 only) | nodeLength:u8 | sequence:u64 | first:i64 | count:i64 |
/// bitmapLength:u8 | node | bitmap</c>, little-endian, names in UTF-8 (API names are at most 128
/// ASCII characters). The checksum covers everything after itself, so a record torn by a crash
/// in the middle of a write is recognised and ends the segment's valid prefix.
/// Also the journal's <c>.alive</c> file: the last sign of life, the last durable sequence and the
/// sequence every entry up to which is folded into the checkpoints, with a checksum.
/// </summary>
/// <remarks>
/// The "previous durable" sequence in a segment's header is what makes the files checkable: every
/// segment before it must hold entries up to that sequence, so a segment that was cut short, lost a
/// record in its middle or vanished is told from the one thing a crash leaves, a torn tail after
/// the last acknowledged group commit (see FileBitmapJournal.RecoverAsync).
/// </remarks>
internal static class JournalCodec
{
    /// <summary>Header of the segments this version writes (version 2).</summary>
    public const int HeaderLength = 24;

    /// <summary>Header of version 1 segments (no previous durable sequence): still read.</summary>
    private const int HeaderLengthV1 = 16;

    /// <summary>Length of the <c>.alive</c> file's content.</summary>
    public const int AliveLength = 28;

    private const int FixedLength = 33;
    private static readonly byte[] MagicV1 = "BMJRNL01"u8.ToArray();
    private static readonly byte[] MagicV2 = "BMJRNL02"u8.ToArray();

    /// <param name="previousDurable">The last sequence durable in the journal when this segment is opened (0: none).</param>
    public static void WriteHeader(Span<byte> destination, long baseSequence, long previousDurable)
    {
        MagicV2.CopyTo(destination);
        BinaryPrimitives.WriteInt64LittleEndian(destination[8..], baseSequence);
        BinaryPrimitives.WriteInt64LittleEndian(destination[16..], previousDurable);
    }

    /// <summary>
    /// A segment's header: its base sequence, the last sequence durable before it (version 1:
    /// base − 1, which is what its writer opened a segment with) and where its records start; null
    /// when the header is not ours.
    /// </summary>
    public static (long BaseSequence, long PreviousDurable, int RecordsStart)? ReadHeader(ReadOnlySpan<byte> source)
    {
        if (source.Length >= HeaderLength && source[..8].SequenceEqual(MagicV2))
        {
            var baseSequence = BinaryPrimitives.ReadInt64LittleEndian(source[8..]);
            return (baseSequence, BinaryPrimitives.ReadInt64LittleEndian(source[16..]), HeaderLength);
        }
        if (source.Length >= HeaderLengthV1 && source[..8].SequenceEqual(MagicV1))
        {
            var baseSequence = BinaryPrimitives.ReadInt64LittleEndian(source[8..]);
            return (baseSequence, baseSequence - 1, HeaderLengthV1);
        }
        return null;
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
        destination[6] = (byte)entry.Kind;
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
    /// that is short, fails its checksum, or does not follow the previous one's sequence. Returns the
    /// prefix's length in bytes (the records' whole length when every record is valid).
    /// </summary>
    public static int DecodeAll(ReadOnlySpan<byte> records, long baseSequence, List<JournalEntry> into)
    {
        var previous = baseSequence - 1;
        var offset = 0;
        while (TryDecode(records[offset..], previous, out var entry, out var length))
        {
            into.Add(entry);
            previous = entry.Sequence;
            offset += length;
        }
        return offset;
    }

    /// <summary>
    /// Past the end of a segment's valid prefix (<paramref name="rest"/> starts at the record that did
    /// not decode): finds the valid records that still follow, at any byte offset (a damaged length
    /// cannot say where the next record starts), in increasing sequence after <paramref name="after"/>,
    /// and adds them. Only runs where the prefix ended before the end of the file: a torn tail (a few
    /// KiB at most) or damage. Returns the highest sequence added, or null when none was found.
    /// </summary>
    public static long? DecodeAfterDamage(ReadOnlySpan<byte> rest, long after, List<JournalEntry> into)
    {
        long? highest = null;
        var previous = after;
        var offset = 1;
        while (offset + FixedLength <= rest.Length)
        {
            if (TryDecode(rest[offset..], previous, out var entry, out var length))
            {
                into.Add(entry);
                previous = entry.Sequence;
                highest = entry.Sequence;
                offset += length;
            }
            else
            {
                offset++;
            }
        }
        return highest;
    }

    private static bool TryDecode(ReadOnlySpan<byte> records, long previous, out JournalEntry entry, out int length)
    {
        entry = default;
        length = 0;
        if (records.Length < FixedLength)
            return false;
        length = BinaryPrimitives.ReadUInt16LittleEndian(records[4..]);
        if (length < FixedLength || length > records.Length)
            return false;
        var record = records[..length];
        if (BinaryPrimitives.ReadUInt32LittleEndian(record) != Crc32C.Compute(record[4..]) || record[6] is < (byte)JournalEntryKind.Mark or > (byte)JournalEntryKind.Relog)
            return false;
        int nodeLength = record[7];
        int bitmapLength = record[32];
        var sequence = BinaryPrimitives.ReadInt64LittleEndian(record[8..]);
        var first = BinaryPrimitives.ReadInt64LittleEndian(record[16..]);
        var count = BinaryPrimitives.ReadInt64LittleEndian(record[24..]);
        if (FixedLength + nodeLength + bitmapLength != length || sequence <= previous || first < 0 || count <= 0)
            return false;
        var node = Encoding.UTF8.GetString(record.Slice(FixedLength, nodeLength));
        var bitmap = Encoding.UTF8.GetString(record.Slice(FixedLength + nodeLength, bitmapLength));
        entry = new JournalEntry(sequence, node, bitmap, first, count, (JournalEntryKind)record[6]);
        return true;
    }

    /// <summary>The <c>.alive</c> content: ticks of the last sign of life, the last durable sequence, the folded-through sequence, crc32c.</summary>
    public static void WriteAlive(Span<byte> destination, long ticks, long durable, long folded)
    {
        BinaryPrimitives.WriteInt64LittleEndian(destination, ticks);
        BinaryPrimitives.WriteInt64LittleEndian(destination[8..], durable);
        BinaryPrimitives.WriteInt64LittleEndian(destination[16..], folded);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[24..], Crc32C.Compute(destination[..24]));
    }

    /// <summary>
    /// Reads an <c>.alive</c> file: the ticks (also from the 8-byte form earlier versions wrote), and
    /// the durable and folded-through sequences when present and intact (null otherwise: recovery is
    /// then as strict as the segments alone allow).
    /// </summary>
    public static (long Ticks, long? Durable, long? Folded) ReadAlive(ReadOnlySpan<byte> source)
    {
        if (source.Length < 8)
            return (0, null, null);
        var ticks = BinaryPrimitives.ReadInt64LittleEndian(source);
        if (source.Length < AliveLength || BinaryPrimitives.ReadUInt32LittleEndian(source[24..]) != Crc32C.Compute(source[..24]))
            return (ticks, null, null);
        return (ticks, BinaryPrimitives.ReadInt64LittleEndian(source[8..]), BinaryPrimitives.ReadInt64LittleEndian(source[16..]));
    }
}
