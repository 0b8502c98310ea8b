using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Nbd.Protocol;

/// <summary>
/// Big-endian encoders (and the request decoder) of the messages both sides exchange: the
/// connection decides what to answer, this layer knows how each message is laid out.
/// </summary>
internal static class NbdWire
{
    /// <summary>Header and offset of an OFFSET_DATA chunk; the data follows.</summary>
    public const int DataChunkHeaderSize = NbdConstants.StructuredReplyHeaderSize + 8;

    /// <summary>A whole OFFSET_HOLE chunk: header, offset, length.</summary>
    public const int HoleChunkSize = NbdConstants.StructuredReplyHeaderSize + 12;

    /// <summary>Header and context id of a BLOCK_STATUS chunk; the descriptors follow.</summary>
    public const int BlockStatusChunkHeaderSize = NbdConstants.StructuredReplyHeaderSize + 4;

    /// <summary>One BLOCK_STATUS descriptor: length, flags.</summary>
    public const int BlockStatusDescriptorSize = 8;

    /// <summary>Header, errno and message length of an ERROR chunk; the message follows.</summary>
    public const int ErrorChunkHeaderSize = NbdConstants.StructuredReplyHeaderSize + 6;

    /// <summary>Decodes a request header; the caller checks the magic.</summary>
    public static NbdRequestHeader ReadRequest(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32BigEndian(source),
        BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
        BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
        BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
        BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
        BinaryPrimitives.ReadUInt32BigEndian(source[24..]));

    public static void WriteSimpleReply(Span<byte> destination, uint error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdConstants.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
    }

    public static void WriteStructuredHeader(Span<byte> destination, ushort flags, ushort type, ulong cookie, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdConstants.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], length);
    }

    /// <summary>NBD_REPLY_TYPE_NONE, the whole reply of a successful structured command without content.</summary>
    public static void WriteNoneChunk(Span<byte> destination, ulong cookie) =>
        WriteStructuredHeader(destination, NbdConstants.ReplyFlagDone, NbdConstants.ReplyTypeNone, cookie, 0);

    /// <summary>The header of an OFFSET_DATA chunk carrying <paramref name="dataLength"/> bytes read at <paramref name="offset"/>.</summary>
    public static void WriteDataChunkHeader(Span<byte> destination, ushort flags, ulong cookie, long offset, int dataLength)
    {
        WriteStructuredHeader(destination, flags, NbdConstants.ReplyTypeOffsetData, cookie, (uint)(8 + dataLength));
        BinaryPrimitives.WriteUInt64BigEndian(destination[NbdConstants.StructuredReplyHeaderSize..], (ulong)offset);
    }

    /// <summary>An OFFSET_HOLE chunk: [<paramref name="offset"/>, +<paramref name="length"/>) reads as zeroes.</summary>
    public static void WriteHoleChunk(Span<byte> destination, ushort flags, ulong cookie, long offset, uint length)
    {
        WriteStructuredHeader(destination, flags, NbdConstants.ReplyTypeOffsetHole, cookie, 12);
        BinaryPrimitives.WriteUInt64BigEndian(destination[NbdConstants.StructuredReplyHeaderSize..], (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[(NbdConstants.StructuredReplyHeaderSize + 8)..], length);
    }

    /// <summary>The header of a BLOCK_STATUS chunk of <paramref name="descriptors"/> descriptors for context <paramref name="contextId"/>.</summary>
    public static void WriteBlockStatusChunkHeader(Span<byte> destination, ushort flags, ulong cookie, uint contextId, int descriptors)
    {
        WriteStructuredHeader(destination, flags, NbdConstants.ReplyTypeBlockStatus, cookie, (uint)(4 + (BlockStatusDescriptorSize * descriptors)));
        BinaryPrimitives.WriteUInt32BigEndian(destination[NbdConstants.StructuredReplyHeaderSize..], contextId);
    }

    /// <summary>Descriptor <paramref name="index"/> of a BLOCK_STATUS chunk's descriptor area.</summary>
    public static void WriteBlockStatusDescriptor(Span<byte> descriptors, int index, uint length, uint flags)
    {
        var at = descriptors[(BlockStatusDescriptorSize * index)..];
        BinaryPrimitives.WriteUInt32BigEndian(at, length);
        BinaryPrimitives.WriteUInt32BigEndian(at[4..], flags);
    }

    /// <summary>Updates the length of descriptor <paramref name="index"/> (a run that grew).</summary>
    public static void RewriteBlockStatusDescriptorLength(Span<byte> descriptors, int index, uint length) =>
        BinaryPrimitives.WriteUInt32BigEndian(descriptors[(BlockStatusDescriptorSize * index)..], length);

    /// <summary>The error text as sent: UTF-8, cut to <see cref="NbdConstants.MaxErrorTextChars"/>.</summary>
    public static byte[] ErrorText(string message) =>
        Encoding.UTF8.GetBytes(message.Length > NbdConstants.MaxErrorTextChars ? message[..NbdConstants.MaxErrorTextChars] : message);

    /// <summary>The size of an ERROR chunk carrying <paramref name="text"/>.</summary>
    public static int ErrorChunkSize(ReadOnlySpan<byte> text) => ErrorChunkHeaderSize + text.Length;

    /// <summary>A whole ERROR chunk (the last of its reply) with an errno and a message.</summary>
    public static void WriteErrorChunk(Span<byte> destination, ulong cookie, uint errno, ReadOnlySpan<byte> text)
    {
        WriteStructuredHeader(destination, NbdConstants.ReplyFlagDone, NbdConstants.ReplyTypeError, cookie, (uint)(6 + text.Length));
        BinaryPrimitives.WriteUInt32BigEndian(destination[NbdConstants.StructuredReplyHeaderSize..], errno);
        BinaryPrimitives.WriteUInt16BigEndian(destination[(NbdConstants.StructuredReplyHeaderSize + 4)..], (ushort)text.Length);
        text.CopyTo(destination[ErrorChunkHeaderSize..]);
    }

    public static void WriteRequest(Span<byte> destination, ushort flags, ushort type, ulong cookie, ulong offset, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdConstants.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], length);
    }

    /// <summary>An option request: IHAVEOPT, option, length, data.</summary>
    public static byte[] OptionRequest(uint option, ReadOnlySpan<byte> data)
    {
        var buffer = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdConstants.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), (uint)data.Length);
        data.CopyTo(buffer.AsSpan(16));
        return buffer;
    }

    /// <summary>A fixed-newstyle option reply: magic, option, reply type, length, data.</summary>
    public static byte[] OptionReply(uint option, uint replyType, ReadOnlySpan<byte> data)
    {
        var buffer = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdConstants.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), replyType);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(16), (uint)data.Length);
        data.CopyTo(buffer.AsSpan(20));
        return buffer;
    }

    /// <summary>Name of an errno value the protocol defines, for messages.</summary>
    public static string ErrnoName(uint errno) => errno switch
    {
        NbdConstants.EPERM => "EPERM",
        NbdConstants.EIO => "EIO",
        NbdConstants.ENOMEM => "ENOMEM",
        NbdConstants.EINVAL => "EINVAL",
        NbdConstants.ENOSPC => "ENOSPC",
        NbdConstants.EOVERFLOW => "EOVERFLOW",
        NbdConstants.ENOTSUP => "ENOTSUP",
        NbdConstants.ESHUTDOWN => "ESHUTDOWN",
        _ => $"errno {errno}",
    };
}
