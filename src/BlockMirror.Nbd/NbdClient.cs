using System.Net.Security;
using System.Net.Sockets;
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
public sealed partial class NbdClient : IAsyncDisposable
{
    /// <summary>Largest TRIM/WRITE_ZEROES/BLOCK_STATUS length we send in one request (the field is 32 bits).</summary>
    private const long MaxNonDataRequest = 1L << 30;

    private readonly NbdUri _uri;
    private readonly Socket _socket;
    private readonly NetworkStream _network;

    // The byte streams: the socket's, or the TLS session's once NBD_OPT_STARTTLS succeeded. Set
    // by the negotiation, before the reader and any request exist.
    private Stream _input;
    private Stream _output;
    private SslStream? _tls;
    private NbdTlsTransport? _transport;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly SemaphoreSlim _inFlight;
    private readonly Dictionary<ulong, NbdPendingRequest> _pending = [];
    private readonly Dictionary<uint, string> _contextNames = [];
    private Task? _reader;
    private long _nextCookie;

    // The connection's state (NbdClientState, as an int for Interlocked) and, once Broken, why.
    private int _state = (int)NbdClientState.Negotiating;
    private Exception? _breakReason;
    private int _disposeStarted;

    private NbdClient(NbdUri uri, Socket socket, NbdClientOptions options)
    {
        _uri = uri;
        Options = options;
        _socket = socket;
        _network = new NetworkStream(socket, ownsSocket: false);
        // Until TLS starts nothing is read ahead: what a server sends behind its STARTTLS reply was
        // not protected, and must not be taken for part of the session (see StartTlsAsync).
        _input = uri.Tls ? _network : new BufferedStream(_network, NbdConstants.StreamBufferBytes);
        _output = _network;
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
    public bool Abandoned => Volatile.Read(ref _breakReason) is NbdRequestAbandonedException;

    /// <summary>The connection is TLS (an <c>nbds</c> URI).</summary>
    public bool Tls => _tls is not null;

    /// <summary>The subject of the server's TLS certificate; null without TLS.</summary>
    public string? PeerSubject { get; private set; }

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
    public bool IsClosed => State >= NbdClientState.Broken;

    private NbdClientState State => (NbdClientState)Volatile.Read(ref _state);

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
            // Requests flush their own writes (SendRequestAsync): from here a request's TLS records leave in one send.
            if (client._transport is { } transport)
                transport.GatherWrites = true;
            client._reader = Task.Run(client.ReadRepliesAsync, CancellationToken.None);
            Interlocked.CompareExchange(ref client._state, (int)NbdClientState.Ready, (int)NbdClientState.Negotiating);
            return client;
        }
        catch (Exception e) when (e is not BlockException && (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or System.Security.Authentication.AuthenticationException))
        {
            var inTls = client?.Tls == true;
            await DisposeFailedAsync(client, socket).ConfigureAwait(false);
            if (e is OperationCanceledException && cancellationToken.IsCancellationRequested)
                throw;
            var reason = e switch
            {
                OperationCanceledException => $"no answer within {options.ConnectTimeout.TotalSeconds:0.#} s",
                // TLS 1.3 servers judge the client's certificate after the client finished its handshake: a refusal arrives as the end of the session.
                _ when inTls => $"the server ended the TLS session during the handshake; it may not accept this host's certificate ({(options.Tls?.Certificate is { } own ? own.TargetCertificate.Subject : "none was presented")}): {NbdTlsFiles.Explain(e)}",
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

    // ---- state ----------------------------------------------------------------------------

    private void ThrowIfClosed()
    {
        if (IsClosed)
            throw new IOException($"NBD connection to '{_uri}' is closed: {_breakReason!.Message}", _breakReason);
    }

    /// <summary>
    /// The one way a connection ends (Npgsql's <c>NpgsqlConnector.Break</c>): whatever broke it (the
    /// server, a protocol error, a cancelled request, DisposeAsync), the first reason is kept, the
    /// socket is shut so the reader stops, and every pending request fails with it.
    /// </summary>
    private void Break(Exception reason)
    {
        List<NbdPendingRequest> orphans;
        lock (_pending)
        {
            if (State < NbdClientState.Broken)
            {
                _breakReason = reason;
                Volatile.Write(ref _state, (int)NbdClientState.Broken);
            }
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

    /// <summary>A request on the wire was cancelled: the stream is out of step, so the connection goes.</summary>
    private void CutConnection()
    {
        Break(new NbdRequestAbandonedException());
        // Shutdown wakes a reader blocked on the socket; closing also ends a send blocked on a full buffer.
        _socket.Close();
    }

    // ---- shutdown -------------------------------------------------------------------------

    /// <summary>Sends NBD_CMD_DISC (after the requests in flight) and closes the connection.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposeStarted, 1) != 0)
            return;
        if (State == NbdClientState.Ready)
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
                    await _output.WriteAsync(disc).ConfigureAwait(false);
                    await _output.FlushAsync().ConfigureAwait(false);
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
        Break(new ObjectDisposedException(nameof(NbdClient), "The NBD client was closed"));
        if (_reader is not null)
            await _reader.ConfigureAwait(false);
        await _input.DisposeAsync().ConfigureAwait(false);
        if (_tls is not null)
            await _tls.DisposeAsync().ConfigureAwait(false);
        if (_transport is not null)
            await _transport.DisposeAsync().ConfigureAwait(false);
        await _network.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
        Volatile.Write(ref _state, (int)NbdClientState.Closed);
    }
}
