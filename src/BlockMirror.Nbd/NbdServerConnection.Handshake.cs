using System.Buffers.Binary;
using System.Text;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The handshake phase: greeting, client flags and option haggling.</summary>
internal sealed partial class NbdServerConnection
{
    /// <summary>Runs the handshake; true when the client chose an export and transmission begins.</summary>
    private bool Handshake()
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdConstants.NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdConstants.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), NbdConstants.FlagFixedNewstyle | NbdConstants.FlagNoZeroes);
        SendAll(greeting);

        var clientFlags = new byte[4];
        if (!_input.TryReadExact(clientFlags))
            return false; // a port probe: connected and left
        var flags = BinaryPrimitives.ReadUInt32BigEndian(clientFlags);
        if ((flags & ~(NbdConstants.ClientFlagFixedNewstyle | NbdConstants.ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"unknown client flags 0x{flags:x}");
        _fixedNewstyle = (flags & NbdConstants.ClientFlagFixedNewstyle) != 0;
        _noZeroes = (flags & NbdConstants.ClientFlagNoZeroes) != 0;

        var header = new byte[16];
        while (true)
        {
            if (!_input.TryReadExact(header))
                return false;
            var magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (magic != NbdConstants.OptionMagic)
                throw new NbdProtocolException($"bad option magic 0x{magic:x}");
            if (length > NbdConstants.MaxPayload)
                throw new NbdProtocolException($"option {option} claims {length} bytes of data");
            if (_options.Tls is { } tls && _channel.Tls is null)
            {
                switch (TlsFirst(tls, option, length))
                {
                    case TlsGate.Next:
                        continue;
                    case TlsGate.Disconnect:
                        return false;
                }
            }
            else if (_tlsRefusal is { } refusal && option != NbdConstants.OptAbort)
            {
                // TLS is up but the client's certificate is not accepted: every option is refused with why.
                if (option == NbdConstants.OptExportName)
                    return false;
                _input.Discard(length);
                ReplyOption(option, NbdConstants.RepErrPolicy, refusal);
                continue;
            }
            if (option == NbdConstants.OptExportName)
                return HandleExportName((int)length);
            if (!_fixedNewstyle)
                throw new NbdProtocolException($"option {option} sent without fixed newstyle negotiation");
            if (length > MaxOptionData)
            {
                _input.Discard(length);
                ReplyOption(option, NbdConstants.RepErrTooBig, $"option data of {length} bytes is too large");
                continue;
            }
            var data = new byte[length];
            _input.ReadExact(data);

            switch (option)
            {
                case NbdConstants.OptAbort:
                    // The spec asks for an ACK, and for tolerance of clients that hang up first.
                    try
                    {
                        SendOption(option, NbdConstants.RepAck, []);
                    }
                    catch (Exception e) when (IsConnectionFailure(e))
                    {
                    }
                    return false;
                case NbdConstants.OptList:
                    HandleList(data);
                    break;
                case NbdConstants.OptStartTls:
                    if (data.Length != 0)
                        ReplyOption(option, NbdConstants.RepErrInvalid, "NBD_OPT_STARTTLS takes no data");
                    else if (_channel.Tls is not null)
                        ReplyOption(option, NbdConstants.RepErrInvalid, "TLS is already in use");
                    else
                        ReplyOption(option, NbdConstants.RepErrPolicy, "TLS is not configured on this server");
                    break;
                case NbdConstants.OptStructuredReply:
                    if (data.Length != 0)
                        ReplyOption(option, NbdConstants.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
                    else if (_structured)
                        ReplyOption(option, NbdConstants.RepErrInvalid, "structured replies are already negotiated");
                    else
                    {
                        _structured = true;
                        SendOption(option, NbdConstants.RepAck, []);
                    }
                    break;
                case NbdConstants.OptInfo:
                case NbdConstants.OptGo:
                    if (HandleInfo(option, data))
                        return true;
                    break;
                case NbdConstants.OptListMetaContext:
                case NbdConstants.OptSetMetaContext:
                    HandleMetaContext(option, data);
                    break;
                default:
                    ReplyOption(option, NbdConstants.RepErrUnsup, $"option {option} is not supported");
                    break;
            }
        }
    }

    private void SendOption(uint option, uint replyType, ReadOnlySpan<byte> data) =>
        SendAll(NbdWire.OptionReply(option, replyType, data));

    /// <summary>An error reply; its data is a message for humans.</summary>
    private void ReplyOption(uint option, uint replyType, string message) =>
        SendOption(option, replyType, Encoding.UTF8.GetBytes(Truncate(message)));

    private static string Truncate(string message) => message.Length > NbdConstants.MaxErrorTextChars ? message[..NbdConstants.MaxErrorTextChars] : message;

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

    private bool HandleExportName(int length)
    {
        // This option cannot be refused politely: the spec says to hang up on failure.
        if (length > NbdConstants.MaxString)
            throw new NbdProtocolException($"export name of {length} bytes");
        var raw = new byte[length];
        _input.ReadExact(raw);
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
            _server.Logger.UnknownExport(Peer, name);
            return false;
        }
        var reply = new byte[_noZeroes ? 10 : 134];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)node.Size);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags(export, node));
        // Bound before the client hears of it: a client in this process may ask at once which export it reached.
        Bind(export, node);
        SendAll(reply);
        return true;
    }

    private void HandleList(byte[] data)
    {
        if (data.Length != 0)
        {
            ReplyOption(NbdConstants.OptList, NbdConstants.RepErrInvalid, "NBD_OPT_LIST takes no data");
            return;
        }
        foreach (var export in _server.Layer.Exports)
        {
            var name = Encoding.UTF8.GetBytes(export.Name);
            var payload = new byte[4 + name.Length];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
            name.CopyTo(payload, 4);
            SendOption(NbdConstants.OptList, NbdConstants.RepServer, payload);
        }
        SendOption(NbdConstants.OptList, NbdConstants.RepAck, []);
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO; true when GO succeeded.</summary>
    private bool HandleInfo(uint option, byte[] data)
    {
        // Data: u32 name length, name, u16 request count, that many u16 info types.
        if (data.Length < 6)
        {
            ReplyOption(option, NbdConstants.RepErrInvalid, "option data too short");
            return false;
        }
        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6) || nameLength > NbdConstants.MaxString)
        {
            ReplyOption(option, NbdConstants.RepErrInvalid, "export name length does not fit the option");
            return false;
        }
        var requestCount = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 4 + (int)nameLength + 2 + (2 * requestCount))
        {
            ReplyOption(option, NbdConstants.RepErrInvalid, "information request count does not match the option length");
            return false;
        }
        string name;
        try
        {
            name = Decode(data.AsSpan(4, (int)nameLength));
        }
        catch (DecoderFallbackException)
        {
            ReplyOption(option, NbdConstants.RepErrInvalid, "export name is not UTF-8");
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
            ReplyOption(option, NbdConstants.RepErrUnknown, $"export '{name}' not present");
            return false;
        }

        if (wantName)
        {
            var nameBytes = data.AsSpan(4, (int)nameLength);
            var info = new byte[2 + nameBytes.Length];
            BinaryPrimitives.WriteUInt16BigEndian(info, NbdConstants.InfoName);
            nameBytes.CopyTo(info.AsSpan(2));
            SendOption(option, NbdConstants.RepInfo, info);
        }

        // Block sizes are sent whether asked or not: minimum 1 (any alignment works, the node
        // handles partial sectors), preferred 4096, maximum the largest payload we accept.
        var sizes = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(sizes, NbdConstants.InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(2), 1);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(6), 4096);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(10), NbdConstants.MaxPayload);
        SendOption(option, NbdConstants.RepInfo, sizes);

        var exportInfo = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo, NbdConstants.InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(exportInfo.AsSpan(2), (ulong)node.Size);
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo.AsSpan(10), TransmissionFlags(export, node));
        SendOption(option, NbdConstants.RepInfo, exportInfo);

        // Bound before the client hears of it: a client in this process may ask at once which export it reached.
        if (option == NbdConstants.OptGo)
            Bind(export, node);
        SendOption(option, NbdConstants.RepAck, []);
        return option == NbdConstants.OptGo;
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT, with QEMU's query rules: exact
    /// names select; in a LIST, the empty query list, <c>base:</c>, <c>qemu:</c> and
    /// <c>qemu:dirty-bitmap:</c> list everything under them; unknown namespaces select nothing.
    /// </summary>
    private void HandleMetaContext(uint option, byte[] data)
    {
        var list = option == NbdConstants.OptListMetaContext;
        if (!list)
        {
            // A SET replaces the selection even when it fails.
            _contexts = [];
            _contextsExport = null;
            if (!_structured)
            {
                ReplyOption(option, NbdConstants.RepErrInvalid, "structured replies must be negotiated before NBD_OPT_SET_META_CONTEXT");
                return;
            }
        }
        if (!TryParseMetaQueries(data, out var exportName, out var queries, out var error))
        {
            ReplyOption(option, NbdConstants.RepErrInvalid, error);
            return;
        }
        if (FindExport(exportName) is not var (export, node))
        {
            ReplyOption(option, NbdConstants.RepErrUnknown, $"export '{exportName}' not present");
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
            SendOption(option, NbdConstants.RepMetaContext, payload);
        }
        SendOption(option, NbdConstants.RepAck, []);
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
