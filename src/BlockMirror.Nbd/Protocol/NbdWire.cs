using System.Buffers.Binary;

namespace BlockMirror.Nbd.Protocol;

/// <summary>Big-endian encoders of the fixed message headers both sides write.</summary>
internal static class NbdWire
{
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
