using System.Buffers.Binary;
using System.Text;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The handshake phase: greeting, client flags and option haggling.</summary>
internal sealed partial class NbdServerConnection
{
    /// <summary>Runs the handshake; true when the client chose an export and transmission begins.</summary>
    private async Task<bool> HandshakeAsync(CancellationToken ct)
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdConstants.NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdConstants.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), NbdConstants.FlagFixedNewstyle | NbdConstants.FlagNoZeroes);
        await _network.WriteAsync(greeting, ct).ConfigureAwait(false);

        var clientFlags = new byte[4];
        if (!await TryReadExactAsync(clientFlags, ct).ConfigureAwait(false))
            return false; // a port probe: connected and left
        var flags = BinaryPrimitives.ReadUInt32BigEndian(clientFlags);
        if ((flags & ~(NbdConstants.ClientFlagFixedNewstyle | NbdConstants.ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"unknown client flags 0x{flags:x}");
        _fixedNewstyle = (flags & NbdConstants.ClientFlagFixedNewstyle) != 0;
        _noZeroes = (flags & NbdConstants.ClientFlagNoZeroes) != 0;

        var header = new byte[16];
        while (true)
        {
            if (!await TryReadExactAsync(header, ct).ConfigureAwait(false))
                return false;
            var magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (magic != NbdConstants.OptionMagic)
                throw new NbdProtocolException($"bad option magic 0x{magic:x}");
            if (length > NbdConstants.MaxPayload)
                throw new NbdProtocolException($"option {option} claims {length} bytes of data");
            if (option == NbdConstants.OptExportName)
                return await HandleExportNameAsync((int)length, ct).ConfigureAwait(false);
            if (!_fixedNewstyle)
                throw new NbdProtocolException($"option {option} sent without fixed newstyle negotiation");
            if (length > MaxOptionData)
            {
                await DiscardAsync(length, ct).ConfigureAwait(false);
                await ReplyOptionAsync(option, NbdConstants.RepErrTooBig, $"option data of {length} bytes is too large", ct).ConfigureAwait(false);
                continue;
            }
            var data = new byte[length];
            await ReadExactAsync(data, ct).ConfigureAwait(false);

            switch (option)
            {
                case NbdConstants.OptAbort:
                    // The spec asks for an ACK, and for tolerance of clients that hang up first.
                    try
                    {
                        await SendOptionAsync(option, NbdConstants.RepAck, [], ct).ConfigureAwait(false);
                    }
                    catch (Exception e) when (IsConnectionFailure(e))
                    {
                    }
                    return false;
                case NbdConstants.OptList:
                    await HandleListAsync(data, ct).ConfigureAwait(false);
                    break;
                case NbdConstants.OptStartTls:
                    await ReplyOptionAsync(option, NbdConstants.RepErrPolicy, "TLS is not supported by this server", ct).ConfigureAwait(false);
                    break;
                case NbdConstants.OptStructuredReply:
                    if (data.Length != 0)
                        await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", ct).ConfigureAwait(false);
                    else if (_structured)
                        await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "structured replies are already negotiated", ct).ConfigureAwait(false);
                    else
                    {
                        _structured = true;
                        await SendOptionAsync(option, NbdConstants.RepAck, [], ct).ConfigureAwait(false);
                    }
                    break;
                case NbdConstants.OptInfo:
                case NbdConstants.OptGo:
                    if (await HandleInfoAsync(option, data, ct).ConfigureAwait(false))
                        return true;
                    break;
                case NbdConstants.OptListMetaContext:
                case NbdConstants.OptSetMetaContext:
                    await HandleMetaContextAsync(option, data, ct).ConfigureAwait(false);
                    break;
                default:
                    await ReplyOptionAsync(option, NbdConstants.RepErrUnsup, $"option {option} is not supported", ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private ValueTask SendOptionAsync(uint option, uint replyType, ReadOnlySpan<byte> data, CancellationToken ct) =>
        _network.WriteAsync(NbdWire.OptionReply(option, replyType, data), ct);

    /// <summary>An error reply; its data is a message for humans.</summary>
    private ValueTask ReplyOptionAsync(uint option, uint replyType, string message, CancellationToken ct) =>
        SendOptionAsync(option, replyType, Encoding.UTF8.GetBytes(Truncate(message)), ct);

    private static string Truncate(string message) => message.Length > NbdWire.MaxErrorMessageChars ? message[..NbdWire.MaxErrorMessageChars] : message;

    /// <summary>The export, and the node behind it, if both still exist.</summary>
    private (BlockExport Export, BlockNode Node)? FindExport(string name)
    {
        var export = _server.Layer.FindExport(name);
        if (export is null || _server.Layer.FindNode(export.Node) is not { } node)
            return null;
        return (export, node);
    }

    private ushort TransmissionFlags(BlockExport export, BlockNode node)
    {
        // No server-side cache: every reply follows the image operation, and FLUSH fsyncs the
        // whole image, so flushes on one connection cover writes acknowledged on any (MULTI_CONN).
        var flags = NbdConstants.TxHasFlags | NbdConstants.TxSendFlush | NbdConstants.TxSendFua | NbdConstants.TxCanMultiConn;
        if (!export.Writable || node.ReadOnly)
            flags |= NbdConstants.TxReadOnly;
        else
            flags |= NbdConstants.TxSendTrim | NbdConstants.TxSendWriteZeroes;
        if (_structured)
            flags |= NbdConstants.TxSendDf;
        return (ushort)flags;
    }

    private void Bind(BlockExport export, BlockNode node)
    {
        if (_contextsExport != export.Name)
            _contexts = []; // contexts were negotiated for another export: they do not carry over
        _node = node;
        _exportReadOnly = !export.Writable || node.ReadOnly;
        _export = export;
    }

    private async Task<bool> HandleExportNameAsync(int length, CancellationToken ct)
    {
        // This option cannot be refused politely: the spec says to hang up on failure.
        if (length > NbdConstants.MaxString)
            throw new NbdProtocolException($"export name of {length} bytes");
        var raw = new byte[length];
        await ReadExactAsync(raw, ct).ConfigureAwait(false);
        string name;
        try
        {
            name = Decode(raw);
        }
        catch (DecoderFallbackException)
        {
            throw new NbdProtocolException("export name is not UTF-8");
        }
        if (FindExport(name) is not var (export, node))
        {
            _server.Log($"NBD client {Peer}: NBD_OPT_EXPORT_NAME of unknown export '{name}'");
            return false;
        }
        var reply = new byte[_noZeroes ? 10 : 134];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)node.Size);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags(export, node));
        // Bound before the client hears of it: a client in this process may ask at once which export it reached.
        Bind(export, node);
        await _network.WriteAsync(reply, ct).ConfigureAwait(false);
        return true;
    }

    private async Task HandleListAsync(byte[] data, CancellationToken ct)
    {
        if (data.Length != 0)
        {
            await ReplyOptionAsync(NbdConstants.OptList, NbdConstants.RepErrInvalid, "NBD_OPT_LIST takes no data", ct).ConfigureAwait(false);
            return;
        }
        foreach (var export in _server.Layer.Exports)
        {
            var name = Encoding.UTF8.GetBytes(export.Name);
            var payload = new byte[4 + name.Length];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
            name.CopyTo(payload, 4);
            await SendOptionAsync(NbdConstants.OptList, NbdConstants.RepServer, payload, ct).ConfigureAwait(false);
        }
        await SendOptionAsync(NbdConstants.OptList, NbdConstants.RepAck, [], ct).ConfigureAwait(false);
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO; true when GO succeeded.</summary>
    private async Task<bool> HandleInfoAsync(uint option, byte[] data, CancellationToken ct)
    {
        // Data: u32 name length, name, u16 request count, that many u16 info types.
        if (data.Length < 6)
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "option data too short", ct).ConfigureAwait(false);
            return false;
        }
        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6) || nameLength > NbdConstants.MaxString)
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "export name length does not fit the option", ct).ConfigureAwait(false);
            return false;
        }
        var requestCount = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 4 + (int)nameLength + 2 + (2 * requestCount))
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "information request count does not match the option length", ct).ConfigureAwait(false);
            return false;
        }
        string name;
        try
        {
            name = Decode(data.AsSpan(4, (int)nameLength));
        }
        catch (DecoderFallbackException)
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "export name is not UTF-8", ct).ConfigureAwait(false);
            return false;
        }
        var wantName = false;
        for (var i = 0; i < requestCount; i++)
        {
            if (BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength + 2 + (2 * i))) == NbdConstants.InfoName)
                wantName = true;
        }

        if (FindExport(name) is not var (export, node))
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrUnknown, $"export '{name}' not present", ct).ConfigureAwait(false);
            return false;
        }

        if (wantName)
        {
            var nameBytes = data.AsSpan(4, (int)nameLength);
            var info = new byte[2 + nameBytes.Length];
            BinaryPrimitives.WriteUInt16BigEndian(info, NbdConstants.InfoName);
            nameBytes.CopyTo(info.AsSpan(2));
            await SendOptionAsync(option, NbdConstants.RepInfo, info, ct).ConfigureAwait(false);
        }

        // Block sizes are sent whether asked or not: minimum 1 (any alignment works, the node
        // handles partial sectors), preferred 4096, maximum the largest payload we accept.
        var sizes = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(sizes, NbdConstants.InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(2), 1);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(6), 4096);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(10), NbdConstants.MaxPayload);
        await SendOptionAsync(option, NbdConstants.RepInfo, sizes, ct).ConfigureAwait(false);

        var exportInfo = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo, NbdConstants.InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(exportInfo.AsSpan(2), (ulong)node.Size);
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo.AsSpan(10), TransmissionFlags(export, node));
        await SendOptionAsync(option, NbdConstants.RepInfo, exportInfo, ct).ConfigureAwait(false);

        // Bound before the client hears of it: a client in this process may ask at once which export it reached.
        if (option == NbdConstants.OptGo)
            Bind(export, node);
        await SendOptionAsync(option, NbdConstants.RepAck, [], ct).ConfigureAwait(false);
        return option == NbdConstants.OptGo;
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT, with QEMU's query rules: exact
    /// names select; in a LIST, the empty query list, <c>base:</c>, <c>qemu:</c> and
    /// <c>qemu:dirty-bitmap:</c> list everything under them; unknown namespaces select nothing.
    /// </summary>
    private async Task HandleMetaContextAsync(uint option, byte[] data, CancellationToken ct)
    {
        var list = option == NbdConstants.OptListMetaContext;
        if (!list)
        {
            // A SET replaces the selection even when it fails.
            _contexts = [];
            _contextsExport = null;
            if (!_structured)
            {
                await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, "structured replies must be negotiated before NBD_OPT_SET_META_CONTEXT", ct).ConfigureAwait(false);
                return;
            }
        }
        if (!TryParseMetaQueries(data, out var exportName, out var queries, out var error))
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrInvalid, error, ct).ConfigureAwait(false);
            return;
        }
        if (FindExport(exportName) is not var (export, node))
        {
            await ReplyOptionAsync(option, NbdConstants.RepErrUnknown, $"export '{exportName}' not present", ct).ConfigureAwait(false);
            return;
        }

        var bitmapNames = export.Bitmaps;
        var baseAllocation = false;
        var bitmaps = new bool[bitmapNames.Count];
        if (list && queries.Count == 0)
        {
            baseAllocation = true;
            Array.Fill(bitmaps, true);
        }
        foreach (var query in queries)
        {
            if (query.StartsWith("base:", StringComparison.Ordinal))
            {
                var rest = query["base:".Length..];
                if (rest == "allocation" || (list && rest.Length == 0))
                    baseAllocation = true;
            }
            else if (query.StartsWith("qemu:", StringComparison.Ordinal))
            {
                var rest = query["qemu:".Length..];
                if (rest.Length == 0 || rest == "dirty-bitmap:")
                {
                    if (list)
                        Array.Fill(bitmaps, true);
                }
                else if (rest.StartsWith("dirty-bitmap:", StringComparison.Ordinal))
                {
                    var index = IndexOf(bitmapNames, rest["dirty-bitmap:".Length..]);
                    if (index >= 0)
                        bitmaps[index] = true;
                }
            }
        }

        var selected = new List<NbdMetaContext>();
        if (baseAllocation)
            selected.Add(new NbdMetaContext(0, NbdConstants.BaseAllocation, null));
        for (var i = 0; i < bitmaps.Length; i++)
        {
            if (!bitmaps[i] || node.FindBitmap(bitmapNames[i]) is not { } bitmap)
                continue;
            selected.Add(new NbdMetaContext((uint)i + 1, NbdConstants.DirtyBitmapPrefix + bitmapNames[i], bitmap));
        }
        foreach (var context in selected)
        {
            var name = Encoding.UTF8.GetBytes(context.Name);
            var payload = new byte[4 + name.Length];
            // The spec reserves the id in LIST replies; it SHOULD be zero there.
            BinaryPrimitives.WriteUInt32BigEndian(payload, list ? 0 : context.Id);
            name.CopyTo(payload, 4);
            await SendOptionAsync(option, NbdConstants.RepMetaContext, payload, ct).ConfigureAwait(false);
        }
        await SendOptionAsync(option, NbdConstants.RepAck, [], ct).ConfigureAwait(false);
        if (!list)
        {
            _contexts = selected;
            _contextsExport = exportName;
        }
    }

    private static int IndexOf(IReadOnlyList<string> names, string name)
    {
        for (var i = 0; i < names.Count; i++)
        {
            if (names[i] == name)
                return i;
        }
        return -1;
    }

    /// <summary>Data: u32 export name length, name, u32 query count, then each query as u32 length + string.</summary>
    private static bool TryParseMetaQueries(byte[] data, out string exportName, out List<string> queries, out string error)
    {
        exportName = "";
        queries = [];
        error = "";
        var span = data.AsSpan();
        if (span.Length < 8)
        {
            error = "option data too short";
            return false;
        }
        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(span);
        if (nameLength > NbdConstants.MaxString || nameLength > (uint)(span.Length - 8))
        {
            error = "export name length does not fit the option";
            return false;
        }
        try
        {
            exportName = Decode(span.Slice(4, (int)nameLength));
            span = span[(4 + (int)nameLength)..];
            var count = BinaryPrimitives.ReadUInt32BigEndian(span);
            span = span[4..];
            for (var i = 0u; i < count; i++)
            {
                if (span.Length < 4)
                {
                    error = "query count does not match the option length";
                    return false;
                }
                var length = BinaryPrimitives.ReadUInt32BigEndian(span);
                if (length > NbdConstants.MaxString || length > (uint)(span.Length - 4))
                {
                    error = "query length does not fit the option";
                    return false;
                }
                queries.Add(Decode(span.Slice(4, (int)length)));
                span = span[(4 + (int)length)..];
            }
        }
        catch (DecoderFallbackException)
        {
            error = "string is not UTF-8";
            return false;
        }
        if (span.Length != 0)
        {
            error = "trailing bytes after the queries";
            return false;
        }
        return true;
    }
}
