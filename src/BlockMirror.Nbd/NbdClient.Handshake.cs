using System.Buffers.Binary;
using System.Text;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>Negotiation: fixed newstyle, structured replies, metadata contexts, NBD_OPT_GO (or NBD_OPT_EXPORT_NAME from an old server).</summary>
public sealed partial class NbdClient
{
    private async Task NegotiateAsync(NbdClientOptions options, CancellationToken ct)
    {
        var greeting = new byte[18];
        await ReadExactAsync(greeting, ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdConstants.NbdMagic)
            throw ConnectFailed(_uri, "the server is not an NBD server (bad magic)");
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != NbdConstants.OptionMagic)
            throw ConnectFailed(_uri, "the server only speaks oldstyle negotiation");
        var serverFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        if ((serverFlags & NbdConstants.FlagFixedNewstyle) == 0)
            throw ConnectFailed(_uri, "the server does not support fixed newstyle negotiation");
        var noZeroes = (serverFlags & NbdConstants.FlagNoZeroes) != 0;
        var clientFlags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(clientFlags, NbdConstants.ClientFlagFixedNewstyle | (noZeroes ? NbdConstants.ClientFlagNoZeroes : 0));
        await _output.WriteAsync(clientFlags, ct).ConfigureAwait(false);

        if (_uri.Tls)
            await StartTlsAsync(options.Tls ?? NbdClientTls.Default, ct).ConfigureAwait(false);

        if (options.StructuredReplies)
        {
            await SendOptionAsync(NbdConstants.OptStructuredReply, [], ct).ConfigureAwait(false);
            var (type, _) = await ReadOptionReplyAsync(NbdConstants.OptStructuredReply, ct).ConfigureAwait(false);
            if (type == NbdConstants.RepErrTlsReqd)
                throw ConnectFailed(_uri, "the server requires TLS (use an nbds:// URI, or \"tls\": true on the node)");
            StructuredReplies = type == NbdConstants.RepAck;
        }

        if (StructuredReplies && options.MetaContexts.Count > 0)
            await SetMetaContextsAsync(options.MetaContexts, ct).ConfigureAwait(false);

        var name = Encoding.UTF8.GetBytes(ExportName);
        var go = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(go, (uint)name.Length);
        name.CopyTo(go, 4);
        await SendOptionAsync(NbdConstants.OptGo, go, ct).ConfigureAwait(false);
        var haveExport = false;
        while (true)
        {
            var (type, data) = await ReadOptionReplyAsync(NbdConstants.OptGo, ct).ConfigureAwait(false);
            if (type == NbdConstants.RepInfo)
            {
                ParseInfo(data, ref haveExport);
                continue;
            }
            if (type == NbdConstants.RepAck)
                break;
            if (type == NbdConstants.RepErrUnsup)
            {
                // A server from before NBD_OPT_GO: the old way cannot report errors, only hang up.
                await ExportNameAsync(noZeroes, ct).ConfigureAwait(false);
                return;
            }
            throw ConnectFailed(_uri, DescribeOptionError(type, data));
        }
        if (!haveExport)
            throw ConnectFailed(_uri, "the server did not describe the export (NBD_INFO_EXPORT)");
    }

    private async Task SetMetaContextsAsync(IReadOnlyList<string> queries, CancellationToken ct)
    {
        var name = Encoding.UTF8.GetBytes(ExportName);
        var encoded = queries.Select(Encoding.UTF8.GetBytes).ToList();
        var data = new byte[4 + name.Length + 4 + encoded.Sum(q => 4 + q.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        var p = 4 + name.Length;
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(p), (uint)encoded.Count);
        p += 4;
        foreach (var q in encoded)
        {
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(p), (uint)q.Length);
            q.CopyTo(data, p + 4);
            p += 4 + q.Length;
        }
        await SendOptionAsync(NbdConstants.OptSetMetaContext, data, ct).ConfigureAwait(false);
        while (true)
        {
            var (type, reply) = await ReadOptionReplyAsync(NbdConstants.OptSetMetaContext, ct).ConfigureAwait(false);
            if (type == NbdConstants.RepMetaContext && reply.Length >= 4)
            {
                _contextNames[BinaryPrimitives.ReadUInt32BigEndian(reply)] = Encoding.UTF8.GetString(reply.AsSpan(4));
                continue;
            }
            if (type == NbdConstants.RepAck)
                return;
            if ((type & NbdConstants.RepFlagError) != 0)
            {
                // No block status then; reads and writes still work.
                _contextNames.Clear();
                return;
            }
            throw ConnectFailed(_uri, $"unexpected reply {type} to NBD_OPT_SET_META_CONTEXT");
        }
    }

    private void ParseInfo(byte[] data, ref bool haveExport)
    {
        if (data.Length < 2)
            throw ConnectFailed(_uri, "malformed NBD_REP_INFO");
        switch (BinaryPrimitives.ReadUInt16BigEndian(data))
        {
            case NbdConstants.InfoExport when data.Length == 12:
                Size = CheckedSize(BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2)));
                TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
                haveExport = true;
                break;
            case NbdConstants.InfoBlockSize when data.Length == 14:
                MinimumBlockSize = Math.Max(1, BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(2)));
                PreferredBlockSize = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(6));
                MaximumBlockSize = Math.Clamp(BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(10)), MinimumBlockSize, (uint)NbdConstants.MaxPayload);
                break;
            case NbdConstants.InfoExport:
            case NbdConstants.InfoBlockSize:
                throw ConnectFailed(_uri, "malformed NBD_REP_INFO");
        }
    }

    private long CheckedSize(ulong size) =>
        size > long.MaxValue ? throw ConnectFailed(_uri, $"export size {size} is too large") : (long)size;

    private async Task ExportNameAsync(bool noZeroes, CancellationToken ct)
    {
        await SendOptionAsync(NbdConstants.OptExportName, Encoding.UTF8.GetBytes(ExportName), ct).ConfigureAwait(false);
        var reply = new byte[noZeroes ? 10 : 134];
        await ReadExactAsync(reply, ct).ConfigureAwait(false);
        Size = CheckedSize(BinaryPrimitives.ReadUInt64BigEndian(reply));
        TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8));
    }

    private ValueTask SendOptionAsync(uint option, ReadOnlySpan<byte> data, CancellationToken ct) =>
        _output.WriteAsync(NbdWire.OptionRequest(option, data), ct);

    private async Task<(uint Type, byte[] Data)> ReadOptionReplyAsync(uint option, CancellationToken ct)
    {
        var header = new byte[20];
        await ReadExactAsync(header, ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdConstants.OptionReplyMagic)
            throw ConnectFailed(_uri, "bad option reply magic");
        if (BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)) != option)
            throw ConnectFailed(_uri, "option reply for another option");
        var type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (length > 1024 * 1024)
            throw ConnectFailed(_uri, $"option reply of {length} bytes");
        var data = new byte[length];
        await ReadExactAsync(data, ct).ConfigureAwait(false);
        return (type, data);
    }

    private static string DescribeOptionError(uint type, byte[] data)
    {
        var message = data.Length > 0 ? Encoding.UTF8.GetString(data) : null;
        var what = type switch
        {
            NbdConstants.RepErrUnknown => "unknown export",
            NbdConstants.RepErrPolicy => "refused by server policy",
            NbdConstants.RepErrInvalid => "invalid request",
            NbdConstants.RepErrTlsReqd => "the server requires TLS",
            NbdConstants.RepErrShutdown => "the server is shutting down",
            NbdConstants.RepErrUnsup => "unsupported",
            _ => $"error reply 0x{type:x}",
        };
        return message is null ? what : $"{what}: {message}";
    }

    private async ValueTask ReadExactAsync(Memory<byte> buffer, CancellationToken ct)
    {
        var read = await _input.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        if (read < buffer.Length)
            throw new EndOfStreamException("The NBD server closed the connection");
    }
}
