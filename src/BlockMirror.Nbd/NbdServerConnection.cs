using System.Net.Sockets;
using System.Text;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// One client of the <see cref="NbdServer"/>: the fixed-newstyle handshake, then the transmission
/// phase, both read by a thread of the connection's own with blocking receives (nbdkit's shape: the
/// kernel wakes the reader itself, no epoll thread and thread-pool hop per request). The reader
/// parses each request and starts it itself: a read served from the page cache or a small write
/// runs to its reply on the reader, anything that has to wait (the device, the journal, a flush)
/// continues on the thread pool when it can, and the reader goes on with the next request, up to
/// <see cref="NbdServerOptions.MaxInFlightPerConnection"/> at once. Replies go through one
/// <see cref="NbdReplyWriter"/>: whole, never interleaved mid-message, and several in one send.
/// </summary>
internal sealed partial class NbdServerConnection : IAsyncDisposable
{
    /// <summary>Option data we read into memory; longer options are skipped and refused (NBD_REP_ERR_TOO_BIG).</summary>
    private const int MaxOptionData = NbdConstants.MaxMessageBytes;

    /// <summary>An oversized WRITE's payload is read and dropped up to this size, so the connection survives; beyond it we hang up.</summary>
    private const long MaxSkippablePayload = 256L * 1024 * 1024;

    /// <summary>Most content chunks in one sparse READ reply; the rest of the range goes as data.</summary>
    private const int MaxReadChunks = 64;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly NbdServer _server;
    private readonly NbdServerOptions _options;
    private readonly Socket _socket;
    private readonly NbdChannel _channel;
    private readonly NbdSocketReader _input;
    private readonly NbdReplyWriter _replies;
    private readonly SemaphoreSlim _slots;

    // The state drives these: leaving Transmission cancels _stopReading (the reader stops taking
    // requests), Break cancels _broken (work in flight stops, nothing more is sent).
    private readonly CancellationTokenSource _stopReading = new();
    private readonly CancellationTokenSource _broken = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Negotiated state. Written only by the handshake, read by the transmission phase after it.
    private bool _fixedNewstyle;
    private bool _noZeroes;
    private bool _structured;
    private IReadOnlyList<NbdMetaContext> _contexts = [];
    private string? _contextsExport;
    private volatile BlockExport? _export;
    private BlockNode? _node;
    private bool _exportReadOnly;

    // Why a client that completed TLS may not use the server (its certificate); null = it may.
    private string? _tlsRefusal;

    // The connection's state (NbdConnectionState, as an int for Interlocked) and, once Broken, why.
    private int _state = (int)NbdConnectionState.Handshake;
    private Exception? _breakReason;

    // The reader holds one reference; each dispatched request holds one. Zero = drained.
    private int _references = 1;

    public NbdServerConnection(NbdServer server, Socket socket)
    {
        _server = server;
        _options = server.Options;
        _socket = socket;
        if (socket.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
            socket.NoDelay = true; // replies are whole messages; Nagle would only delay them
        RemoteEndPoint = socket.RemoteEndPoint;
        LocalEndPoint = socket.LocalEndPoint;
        Peer = RemoteEndPoint?.ToString() is { Length: > 0 } remote ? remote : "unix-client";
        // The socket is only ever used synchronously: one asynchronous operation would switch .NET to
        // emulating blocking calls on top of epoll, the very hop the connection's thread avoids.
        _channel = new NbdChannel(socket);
        _replies = new NbdReplyWriter(_channel, e => Break(e));
        _input = new NbdSocketReader(_channel, _replies);
        _slots = new SemaphoreSlim(_options.MaxInFlightPerConnection, _options.MaxInFlightPerConnection);
    }

    /// <summary>The remote address, for diagnostics.</summary>
    public string Peer { get; }

    /// <summary>The client's end of the connection (a Unix client of this process binds a unique abstract name).</summary>
    public System.Net.EndPoint? RemoteEndPoint { get; }

    /// <summary>The server's end of the connection.</summary>
    public System.Net.EndPoint? LocalEndPoint { get; }

    /// <summary>The subject of the client's TLS certificate; null without TLS or without one.</summary>
    public string? PeerSubject { get; private set; }

    /// <summary>The export this connection transmits on; null during the handshake.</summary>
    public string? ExportName => _export?.Name;

    /// <summary>Completes when the connection has ended, every request it accepted has finished, and it is disposed.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Why the connection ended (the first Break's reason), or null while it lasts; for diagnostics.</summary>
    public Exception? BreakReason => Volatile.Read(ref _state) >= (int)NbdConnectionState.Broken ? _breakReason : null;

    /// <summary>The replies' sender, whose counts show how many replies shared a send.</summary>
    internal NbdReplyWriter Replies => _replies;

    /// <summary>Requests accepted and not answered yet (their reply not queued); for tests.</summary>
    internal int RequestsInFlight => _options.MaxInFlightPerConnection - _slots.CurrentCount;

    private NbdConnectionState State => (NbdConnectionState)Volatile.Read(ref _state);

    /// <summary>
    /// Runs the connection: its thread does the handshake and reads requests until the client
    /// disconnects or the connection is closed; then the requests already accepted reply (up to the
    /// grace period of a close) and the socket is shut.
    /// </summary>
    public async Task RunAsync(CancellationToken serverStopping)
    {
        var reading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                Serve(serverStopping);
                reading.SetResult();
            }
            catch (Exception e)
            {
                reading.SetException(e);
            }
        })
        {
            IsBackground = true,
            Name = "NBD connection",
        };
        thread.Start();
        try
        {
            try
            {
                await reading.Task.ConfigureAwait(false);
            }
            finally
            {
                // Requests already accepted still reply (up to the grace period of a close), and
                // their replies leave before the socket is shut.
                await _drained.Task.ConfigureAwait(false);
                await _replies.WhenAllSentAsync().ConfigureAwait(false);
            }
        }
        catch (NbdProtocolException e)
        {
            _server.Logger.ProtocolViolation(Peer, e.Message);
            Break(e);
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            // The client went away (or we cut it); nothing to report.
            Break(e);
        }
        finally
        {
            Break(new EndOfStreamException("the connection ended"));
        }
    }

    /// <summary>The connection's thread: the handshake, then the requests.</summary>
    private void Serve(CancellationToken serverStopping)
    {
        try
        {
            if (HandshakeWithin(serverStopping) && TryMove(NbdConnectionState.Handshake, NbdConnectionState.Transmission))
                ReadRequests();
        }
        finally
        {
            ReleaseReference();
        }
    }

    /// <summary>The handshake, cut off after <see cref="NbdServerOptions.HandshakeTimeout"/> or when the server stops.</summary>
    private bool HandshakeWithin(CancellationToken serverStopping)
    {
        // Blocking receives take no token: an expired handshake breaks the connection, which
        // shuts the socket and so ends the receive it waits in.
        using var timeout = new CancellationTokenSource(_options.HandshakeTimeout);
        using var expired = timeout.Token.UnsafeRegister(static c => ((NbdServerConnection)c!).Break(new TimeoutException("handshake timed out")), this);
        using var stopping = serverStopping.UnsafeRegister(static c => ((NbdServerConnection)c!).Break(new OperationCanceledException("the server is stopping")), this);
        try
        {
            var transmit = Handshake();
            if (!transmit && TimedOut())
                _server.Logger.HandshakeTimedOut(Peer);
            return transmit;
        }
        catch (Exception e) when (IsConnectionFailure(e) && TimedOut())
        {
            _server.Logger.HandshakeTimedOut(Peer);
            return false;
        }

        bool TimedOut() => timeout.IsCancellationRequested && _breakReason is TimeoutException;
    }

    /// <summary>
    /// Ends the connection: stop reading requests now, let the ones in flight reply, and cut the
    /// socket after <paramref name="grace"/> whatever remains.
    /// </summary>
    public void BeginClose(TimeSpan grace)
    {
        if (State == NbdConnectionState.Handshake)
        {
            // Still haggling: nothing in flight to wait for.
            Break(new OperationCanceledException("the connection was closed during the handshake"));
            return;
        }
        if (!TryMove(NbdConnectionState.Transmission, NbdConnectionState.Draining))
            return; // closing or broken already
        try
        {
            _stopReading.Cancel();
            // Whatever has not replied when the grace ends is cut off with the connection.
            _broken.Token.UnsafeRegister(static (c, _) => ((NbdServerConnection)c!).Break(new TimeoutException("requests still running when the close's grace ended")), this);
            _broken.CancelAfter(grace);
            // Wakes the reader blocked in recv.
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException)
        {
        }
    }

    public ValueTask DisposeAsync()
    {
        Break(new ObjectDisposedException(nameof(NbdServerConnection)));
        if ((NbdConnectionState)Interlocked.Exchange(ref _state, (int)NbdConnectionState.Closed) == NbdConnectionState.Closed)
            return ValueTask.CompletedTask;
        _replies.Dispose();
        _channel.Dispose();
        _socket.Dispose();
        _broken.Dispose();
        _stopReading.Dispose();
        _slots.Dispose();
        _completion.TrySetResult();
        return ValueTask.CompletedTask;
    }

    private bool TryMove(NbdConnectionState from, NbdConnectionState to) =>
        Interlocked.CompareExchange(ref _state, (int)to, (int)from) == (int)from;

    /// <summary>
    /// The one way a connection ends (Npgsql's <c>NpgsqlConnector.Break</c>), whatever ended it: the
    /// first reason is kept, the reader stops, work in flight is cancelled, and the socket is shut
    /// both ways so the client sees the end (and a send or receive blocked on it returns). Later
    /// calls change nothing.
    /// </summary>
    private void Break(Exception reason)
    {
        while (true)
        {
            var from = State;
            if (from >= NbdConnectionState.Broken)
                return;
            if (TryMove(from, NbdConnectionState.Broken))
                break;
        }
        _breakReason = reason;
        try
        {
            _stopReading.Cancel();
            _broken.Cancel();
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException)
        {
        }
    }

    private void ReleaseReference()
    {
        if (Interlocked.Decrement(ref _references) == 0)
            _drained.TrySetResult();
    }

    private static bool IsConnectionFailure(Exception e) =>
        e is IOException or SocketException or ObjectDisposedException or OperationCanceledException;

    /// <summary>Sends one handshake message; the handshake is a strict dialogue, nothing to coalesce.</summary>
    private void SendAll(ReadOnlySpan<byte> message) => _channel.Send(message);

    private static string Decode(ReadOnlySpan<byte> bytes) => StrictUtf8.GetString(bytes);
}
