using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using BlockMirror.Core;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// An NBD client connection to one export: fixed newstyle, NBD_OPT_GO (falling back to
/// NBD_OPT_EXPORT_NAME), structured replies and metadata contexts when the server has them.
/// Thread-safe: any number of callers may issue requests at once; they are pipelined on the one
/// connection (up to <see cref="NbdClientOptions.MaxInFlight"/>) and matched to replies by cookie.
/// A request can be cancelled while it waits to be sent; cancelling one already on the wire
/// abandons the connection (see <see cref="Abandoned"/>): its reply would be read straight into the
/// caller's buffer, so the only safe way to stop waiting for a server that does not answer is to
/// cut the connection and wait for the reader to stop. If the connection breaks, every pending and
/// later request fails with an <see cref="IOException"/>.
/// </summary>
public sealed class NbdClient : IAsyncDisposable
{
    /// <summary>Largest TRIM/WRITE_ZEROES/BLOCK_STATUS length we send in one request (the field is 32 bits).</summary>
    private const long MaxNonDataRequest = 1L << 30;

    private readonly NbdUri _uri;
    private readonly Socket _socket;
    private readonly NetworkStream _network;
    private readonly BufferedStream _input;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly SemaphoreSlim _inFlight;
    private readonly Dictionary<ulong, NbdPendingRequest> _pending = [];
    private readonly Dictionary<uint, string> _contextNames = [];
    private Task? _reader;
    private Exception? _failure;
    private long _nextCookie;
    private int _disposed;
    private int _abandoned;

    private NbdClient(NbdUri uri, Socket socket, NbdClientOptions options)
    {
        _uri = uri;
        Options = options;
        _socket = socket;
        _network = new NetworkStream(socket, ownsSocket: false);
        _input = new BufferedStream(_network, NbdConstants.StreamBufferBytes);
        _inFlight = new SemaphoreSlim(options.MaxInFlight, options.MaxInFlight);
        ExportName = uri.ExportName;
    }

    /// <summary>The export this connection serves.</summary>
    public string ExportName { get; }

    /// <summary>The options the connection was made with (a reconnect uses them again).</summary>
    public NbdClientOptions Options { get; }

    /// <summary>The export's address, as parsed.</summary>
    public NbdUri Uri => _uri;

    /// <summary>This end of the connection (its identity, with <see cref="RemoteEndPoint"/>).</summary>
    public System.Net.EndPoint? LocalEndPoint { get; private set; }

    /// <summary>The server's end of the connection.</summary>
    public System.Net.EndPoint? RemoteEndPoint { get; private set; }

    /// <summary>
    /// A request on the wire was cancelled, so the connection was cut (see the class remarks): the
    /// owner may open a new one; this one fails every request.
    /// </summary>
    public bool Abandoned => Volatile.Read(ref _abandoned) != 0;

    /// <summary>The export's size in bytes.</summary>
    public long Size { get; private set; }

    /// <summary>The 16 transmission flags the server sent (NBD_FLAG_*).</summary>
    public ushort TransmissionFlags { get; private set; }

    /// <summary>Structured replies were negotiated.</summary>
    public bool StructuredReplies { get; private set; }

    /// <summary>Selected metadata contexts, by name, with the ids the server gave them.</summary>
    public IReadOnlyDictionary<string, uint> MetaContexts => _contextNames.ToDictionary(p => p.Value, p => p.Key, StringComparer.Ordinal);

    /// <summary>The server's block size constraints (1 / 4096 / 32 MiB when it sent none).</summary>
    public uint MinimumBlockSize { get; private set; } = 1;

    /// <inheritdoc cref="MinimumBlockSize"/>
    public uint PreferredBlockSize { get; private set; } = 4096;

    /// <inheritdoc cref="MinimumBlockSize"/>
    public uint MaximumBlockSize { get; private set; } = NbdConstants.MaxPayload;

    public bool ReadOnly => (TransmissionFlags & NbdConstants.TxReadOnly) != 0;

    public bool CanFlush => (TransmissionFlags & NbdConstants.TxSendFlush) != 0;

    public bool CanFua => (TransmissionFlags & NbdConstants.TxSendFua) != 0;

    public bool CanTrim => (TransmissionFlags & NbdConstants.TxSendTrim) != 0;

    public bool CanWriteZeroes => (TransmissionFlags & NbdConstants.TxSendWriteZeroes) != 0;

    public bool CanMultiConn => (TransmissionFlags & NbdConstants.TxCanMultiConn) != 0;

    /// <summary>True once the connection has failed or been closed.</summary>
    public bool IsClosed => Volatile.Read(ref _failure) is not null;

    /// <summary>
    /// Connects and negotiates. Failures (refused connection, unknown export, a server that is
    /// not NBD) are <see cref="BlockException"/> <c>nbd-connect-failed</c> naming the reason.
    /// </summary>
    public static async Task<NbdClient> ConnectAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= new NbdClientOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlight, 1);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        Socket? socket = null;
        NbdClient? client = null;
        try
        {
            var endPoint = await uri.ResolveAsync(timeout.Token).ConfigureAwait(false);
            socket = uri.SocketPath is not null
                ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(endPoint, timeout.Token).ConfigureAwait(false);
            client = new NbdClient(uri, socket, options)
            {
                LocalEndPoint = socket.LocalEndPoint,
                RemoteEndPoint = socket.RemoteEndPoint,
            };
            await client.NegotiateAsync(options, timeout.Token).ConfigureAwait(false);
            client._reader = Task.Run(client.ReadRepliesAsync, CancellationToken.None);
            return client;
        }
        catch (Exception e) when (e is not BlockException && (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException))
        {
            await DisposeFailedAsync(client, socket).ConfigureAwait(false);
            if (e is OperationCanceledException && cancellationToken.IsCancellationRequested)
                throw;
            var reason = e switch
            {
                OperationCanceledException => $"no answer within {options.ConnectTimeout.TotalSeconds:0.#} s",
                EndOfStreamException => "the server closed the connection during the handshake (unknown export?)",
                _ => e.Message,
            };
            throw ConnectFailed(uri, reason, e);
        }
        catch
        {
            await DisposeFailedAsync(client, socket).ConfigureAwait(false);
            throw;
        }
    }

    private static async ValueTask DisposeFailedAsync(NbdClient? client, Socket? socket)
    {
        if (client is not null)
            await client.DisposeAsync().ConfigureAwait(false);
        else
            socket?.Dispose();
    }

    internal static BlockException ConnectFailed(NbdUri uri, string reason, Exception? inner = null) =>
        new(BlockErrorKind.Invalid, "nbd-connect-failed", $"Could not connect to NBD export '{uri}': {reason}", inner);

    // ---- handshake ------------------------------------------------------------------------

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
        await _network.WriteAsync(clientFlags, ct).ConfigureAwait(false);

        if (options.StructuredReplies)
        {
            await SendOptionAsync(NbdConstants.OptStructuredReply, [], ct).ConfigureAwait(false);
            var (type, _) = await ReadOptionReplyAsync(NbdConstants.OptStructuredReply, ct).ConfigureAwait(false);
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
        _network.WriteAsync(NbdWire.OptionRequest(option, data), ct);

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

    // ---- commands -------------------------------------------------------------------------

    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/> (split into requests of at most <see cref="MaximumBlockSize"/>, sent together).</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        SplitAsync(offset, buffer.Length, MaximumBlockSize, (o, start, len) =>
            ExecuteAsync(NbdConstants.CmdRead, 0, o, (uint)len, default, buffer.Slice(start, len), "read", cancellationToken));

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; with <paramref name="fua"/> durable on return.</summary>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) =>
        SplitAsync(offset, data.Length, MaximumBlockSize, (o, start, len) =>
            ExecuteAsync(NbdConstants.CmdWrite, fua ? NbdConstants.CmdFlagFua : (ushort)0, o, (uint)len, data.Slice(start, len), default, "write", cancellationToken));

    /// <summary>NBD_CMD_FLUSH.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync(NbdConstants.CmdFlush, 0, 0, 0, default, default, "flush", cancellationToken).ConfigureAwait(false);

    /// <summary>NBD_CMD_TRIM (split into 1 GiB requests).</summary>
    public async ValueTask TrimAsync(long offset, long length, bool fua = false, CancellationToken cancellationToken = default)
    {
        for (var done = 0L; done < length; done += MaxNonDataRequest)
        {
            var len = Math.Min(MaxNonDataRequest, length - done);
            await ExecuteAsync(NbdConstants.CmdTrim, fua ? NbdConstants.CmdFlagFua : (ushort)0, offset + done, (uint)len, default, default, "trim", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>NBD_CMD_WRITE_ZEROES; <paramref name="noHole"/> asks the server not to deallocate.</summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, bool noHole = false, bool fua = false, CancellationToken cancellationToken = default)
    {
        var flags = (ushort)((noHole ? NbdConstants.CmdFlagNoHole : 0) | (fua ? NbdConstants.CmdFlagFua : 0));
        for (var done = 0L; done < length; done += MaxNonDataRequest)
        {
            var len = Math.Min(MaxNonDataRequest, length - done);
            await ExecuteAsync(NbdConstants.CmdWriteZeroes, flags, offset + done, (uint)len, default, default, "write-zeroes", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// NBD_CMD_BLOCK_STATUS over [offset, offset+length) (length capped at 1 GiB): the
    /// descriptors of every selected context, by context name. The server may describe only a
    /// prefix of the range.
    /// </summary>
    public async ValueTask<IReadOnlyDictionary<string, IReadOnlyList<NbdExtent>>> BlockStatusAsync(long offset, long length, bool requestOne = false, CancellationToken cancellationToken = default)
    {
        var len = (uint)Math.Clamp(length, 0, MaxNonDataRequest);
        var pending = await ExecuteAsync(NbdConstants.CmdBlockStatus, requestOne ? NbdConstants.CmdFlagReqOne : (ushort)0, offset, len, default, default, "block-status", cancellationToken).ConfigureAwait(false);
        var result = new Dictionary<string, IReadOnlyList<NbdExtent>>(StringComparer.Ordinal);
        foreach (var (id, extents) in pending.Status ?? [])
            result[_contextNames.GetValueOrDefault(id) ?? $"#{id}"] = extents;
        return result;
    }

    /// <summary>Sends an arbitrary request (tests of server validation); throws <see cref="NbdException"/> on an error reply.</summary>
    internal async ValueTask RawAsync(ushort type, ushort flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken = default) =>
        await ExecuteAsync(type, flags, (long)offset, length, payload, readBuffer, $"command {type}", cancellationToken, rawOffset: offset).ConfigureAwait(false);

    private static async ValueTask SplitAsync(long offset, int length, uint maxChunk, Func<long, int, int, ValueTask<NbdPendingRequest>> send)
    {
        if (length <= maxChunk)
        {
            await send(offset, 0, length).ConfigureAwait(false);
            return;
        }
        var tasks = new List<Task>();
        for (var start = 0; start < length; start += (int)maxChunk)
            tasks.Add(send(offset + start, start, (int)Math.Min(maxChunk, length - start)).AsTask());
        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    private async ValueTask<NbdPendingRequest> ExecuteAsync(ushort type, ushort flags, long offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, string operation, CancellationToken cancellationToken, ulong? rawOffset = null)
    {
        ThrowIfClosed();
        await _inFlight.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var pending = new NbdPendingRequest(type, offset, length, readBuffer);
            var cookie = (ulong)Interlocked.Increment(ref _nextCookie);
            lock (_pending)
            {
                ThrowIfClosed();
                _pending.Add(cookie, pending);
            }
            await SendRequestAsync(type, flags, cookie, rawOffset ?? (ulong)offset, length, payload, cancellationToken).ConfigureAwait(false);
            try
            {
                await pending.Completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                await AbandonAsync().ConfigureAwait(false);
                throw;
            }
            if (pending.Errno != 0)
                throw new NbdException(pending.Errno, pending.ErrorMessage, operation);
            return pending;
        }
        finally
        {
            _inFlight.Release();
        }
    }

    private async ValueTask SendRequestAsync(ushort type, ushort flags, ulong cookie, ulong offset, uint length, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        // Small payloads go in the same write as their header (one segment on the wire).
        var inline = payload.Length <= NbdConstants.StreamBufferBytes ? payload.Length : 0;
        var message = ArrayPool<byte>.Shared.Rent(NbdConstants.RequestHeaderSize + inline);
        try
        {
            NbdWire.WriteRequest(message, flags, type, cookie, offset, length);
            if (inline > 0)
                payload.Span.CopyTo(message.AsSpan(NbdConstants.RequestHeaderSize));
            try
            {
                await _sendLock.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                Complete(cookie);
                throw;
            }
            try
            {
                // Cancellable even half-sent (a server that stops reading fills the socket): the
                // stream is then out of step, so the connection goes.
                await _network.WriteAsync(message.AsMemory(0, NbdConstants.RequestHeaderSize + inline), ct).ConfigureAwait(false);
                if (inline == 0 && payload.Length > 0)
                    await _network.WriteAsync(payload, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                CutConnection();
                throw;
            }
            catch (Exception e)
            {
                Fail(new IOException($"NBD connection to '{_uri}' failed: {e.Message}", e));
                throw new IOException($"NBD connection to '{_uri}' failed: {e.Message}", e);
            }
            finally
            {
                _sendLock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    private void Complete(ulong cookie)
    {
        NbdPendingRequest? pending;
        lock (_pending)
        {
            if (!_pending.Remove(cookie, out pending))
                return;
        }
        pending.Completion.TrySetResult();
    }

    /// <summary>Cuts the connection after a cancelled request and waits until the reader has stopped, so no reply lands in a buffer its caller has given up.</summary>
    private async ValueTask AbandonAsync()
    {
        CutConnection();
        if (_reader is { } reader)
            await reader.ConfigureAwait(false);
    }

    private void CutConnection()
    {
        Volatile.Write(ref _abandoned, 1);
        Fail(new OperationCanceledException("a request was abandoned"));
        // Shutdown wakes a reader blocked on the socket; closing also ends a send blocked on a full buffer.
        _socket.Close();
    }

    private void ThrowIfClosed()
    {
        if (Volatile.Read(ref _failure) is { } failure)
            throw new IOException($"NBD connection to '{_uri}' is closed: {failure.Message}", failure);
    }

    /// <summary>Marks the connection dead and fails every pending request.</summary>
    private void Fail(Exception reason)
    {
        List<NbdPendingRequest> orphans;
        lock (_pending)
        {
            _failure ??= reason;
            orphans = [.. _pending.Values];
            _pending.Clear();
        }
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        var error = new IOException($"NBD connection to '{_uri}' lost: {reason.Message}", reason);
        foreach (var p in orphans)
            p.Completion.TrySetException(error);
    }

    // ---- replies --------------------------------------------------------------------------

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
            Fail(e);
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

    // ---- shutdown -------------------------------------------------------------------------

    /// <summary>Sends NBD_CMD_DISC (after the requests in flight) and closes the connection.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        if (_reader is not null && !IsClosed)
        {
            try
            {
                // The spec wants in-flight requests answered before a soft disconnect; give them a moment.
                Task[] inFlight;
                lock (_pending)
                    inFlight = [.. _pending.Values.Select(p => p.Completion.Task)];
                if (inFlight.Length > 0)
                    await Task.WhenAny(Task.WhenAll(inFlight), Task.Delay(TimeSpan.FromSeconds(1))).ConfigureAwait(false);
                var disc = new byte[NbdConstants.RequestHeaderSize];
                NbdWire.WriteRequest(disc, 0, NbdConstants.CmdDisc, 0, 0, 0);
                await _sendLock.WaitAsync().ConfigureAwait(false);
                try
                {
                    await _network.WriteAsync(disc).ConfigureAwait(false);
                }
                finally
                {
                    _sendLock.Release();
                }
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
            }
        }
        Fail(new ObjectDisposedException(nameof(NbdClient), "The NBD client was closed"));
        if (_reader is not null)
            await _reader.ConfigureAwait(false);
        await _input.DisposeAsync().ConfigureAwait(false);
        await _network.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
    }
}
