using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The reply reader: one loop that matches replies to pending requests by cookie and reads their content into the callers' buffers.</summary>
public sealed partial class NbdClient
{
    private async Task ReadRepliesAsync()
    {
        var header = new byte[NbdConstants.StructuredReplyHeaderSize];
        try
        {
            while (true)
            {
                var got = await _input.ReadAtLeastAsync(header.AsMemory(0, 4), 4, throwOnEndOfStream: false).ConfigureAwait(false);
                if (got == 0)
                    throw new EndOfStreamException("the server closed the connection");
                if (got < 4)
                    throw new EndOfStreamException("the server closed the connection mid-reply");
                var magic = BinaryPrimitives.ReadUInt32BigEndian(header);
                if (magic == NbdConstants.SimpleReplyMagic)
                {
                    await ReadExactAsync(header.AsMemory(4, 12), CancellationToken.None).ConfigureAwait(false);
                    await OnSimpleReplyAsync(BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8))).ConfigureAwait(false);
                }
                else if (magic == NbdConstants.StructuredReplyMagic && StructuredReplies)
                {
                    await ReadExactAsync(header.AsMemory(4, 16), CancellationToken.None).ConfigureAwait(false);
                    await OnChunkAsync(
                        BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)),
                        BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
                        BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)),
                        BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16))).ConfigureAwait(false);
                }
                else
                {
                    throw new NbdProtocolException($"bad reply magic 0x{magic:x8}");
                }
            }
        }
        catch (Exception e)
        {
            Break(e);
        }
    }

    private NbdPendingRequest Lookup(ulong cookie)
    {
        lock (_pending)
        {
            return _pending.GetValueOrDefault(cookie) ?? throw new NbdProtocolException($"reply for unknown cookie {cookie}");
        }
    }

    private async ValueTask OnSimpleReplyAsync(uint error, ulong cookie)
    {
        var pending = Lookup(cookie);
        if (error != 0)
        {
            pending.Errno = error;
        }
        else if (pending.Type == NbdConstants.CmdRead)
        {
            // The data follows a simple reply to a READ with no length of its own.
            await ReadExactAsync(pending.ReadBuffer, CancellationToken.None).ConfigureAwait(false);
        }
        else if (pending.Type == NbdConstants.CmdBlockStatus)
        {
            throw new NbdProtocolException("simple reply to a block status request");
        }
        Complete(cookie);
    }

    private async ValueTask OnChunkAsync(ushort flags, ushort type, ulong cookie, uint length)
    {
        var pending = Lookup(cookie);
        switch (type)
        {
            case NbdConstants.ReplyTypeNone:
                if (length != 0)
                    throw new NbdProtocolException("NBD_REPLY_TYPE_NONE with a payload");
                break;
            case NbdConstants.ReplyTypeOffsetData:
                {
                    if (pending.Type != NbdConstants.CmdRead || length < 9 || length - 8 > pending.Length)
                        throw new NbdProtocolException($"bad data chunk of {length} bytes");
                    var offset = await ReadUInt64Async().ConfigureAwait(false);
                    var start = CheckContent(pending, offset, length - 8);
                    await ReadExactAsync(pending.ReadBuffer.Slice(start, (int)(length - 8)), CancellationToken.None).ConfigureAwait(false);
                    pending.Covered += length - 8;
                    break;
                }
            case NbdConstants.ReplyTypeOffsetHole:
                {
                    if (pending.Type != NbdConstants.CmdRead || length != 12)
                        throw new NbdProtocolException("bad hole chunk");
                    var offset = await ReadUInt64Async().ConfigureAwait(false);
                    var holeLength = (uint)(await ReadUInt64PartAsync(4).ConfigureAwait(false));
                    var start = CheckContent(pending, offset, holeLength);
                    pending.ReadBuffer.Span.Slice(start, (int)holeLength).Clear();
                    pending.Covered += holeLength;
                    break;
                }
            case NbdConstants.ReplyTypeBlockStatus:
                {
                    if (pending.Type != NbdConstants.CmdBlockStatus || length < 12 || (length - 4) % 8 != 0 || length > 16 * 1024 * 1024)
                        throw new NbdProtocolException($"bad block status chunk of {length} bytes");
                    var data = ArrayPool<byte>.Shared.Rent((int)length);
                    try
                    {
                        await ReadExactAsync(data.AsMemory(0, (int)length), CancellationToken.None).ConfigureAwait(false);
                        var id = BinaryPrimitives.ReadUInt32BigEndian(data);
                        var extents = new List<NbdExtent>(((int)length - 4) / 8);
                        var pos = pending.Offset;
                        for (var p = 4; p < length; p += 8)
                        {
                            var len = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(p));
                            extents.Add(new NbdExtent(pos, len, BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(p + 4))));
                            pos += len;
                        }
                        (pending.Status ??= [])[id] = extents;
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(data);
                    }
                    break;
                }
            default:
                if ((type & 0x8000) == 0)
                    throw new NbdProtocolException($"unknown reply chunk type {type}");
                await OnErrorChunkAsync(pending, length).ConfigureAwait(false);
                break;
        }

        if ((flags & NbdConstants.ReplyFlagDone) == 0)
            return;
        if (pending.Errno == 0)
        {
            if (pending.Type == NbdConstants.CmdRead && pending.Covered != pending.Length)
            {
                pending.Errno = NbdConstants.EIO;
                pending.ErrorMessage = $"the server sent {pending.Covered} of {pending.Length} bytes";
            }
            else if (pending.Type == NbdConstants.CmdBlockStatus && pending.Status is null)
            {
                pending.Errno = NbdConstants.EIO;
                pending.ErrorMessage = "the server sent no block status";
            }
        }
        Complete(cookie);
    }

    private async ValueTask OnErrorChunkAsync(NbdPendingRequest pending, uint length)
    {
        if (length < 6 || length > NbdConstants.MaxMessageBytes)
            throw new NbdProtocolException($"bad error chunk of {length} bytes");
        var data = new byte[length];
        await ReadExactAsync(data, CancellationToken.None).ConfigureAwait(false);
        var errno = BinaryPrimitives.ReadUInt32BigEndian(data);
        var messageLength = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4));
        if (messageLength > length - 6)
            throw new NbdProtocolException("error message longer than its chunk");
        if (pending.Errno == 0)
        {
            pending.Errno = errno == 0 ? NbdConstants.EIO : errno;
            pending.ErrorMessage = messageLength > 0 ? Encoding.UTF8.GetString(data, 6, messageLength) : null;
        }
    }

    private static int CheckContent(NbdPendingRequest pending, ulong offset, uint length)
    {
        if (offset < (ulong)pending.Offset || length == 0 || offset + length > (ulong)(pending.Offset + pending.Length))
            throw new NbdProtocolException($"content chunk [{offset}, +{length}) outside the request");
        return (int)(offset - (ulong)pending.Offset);
    }

    private async ValueTask<ulong> ReadUInt64Async() => await ReadUInt64PartAsync(8).ConfigureAwait(false);

    private async ValueTask<ulong> ReadUInt64PartAsync(int bytes)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(8);
        try
        {
            await ReadExactAsync(buffer.AsMemory(0, bytes), CancellationToken.None).ConfigureAwait(false);
            return bytes == 8 ? BinaryPrimitives.ReadUInt64BigEndian(buffer) : BinaryPrimitives.ReadUInt32BigEndian(buffer);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
