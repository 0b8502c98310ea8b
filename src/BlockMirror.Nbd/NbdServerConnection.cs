using System.Net.Sockets;
using System.Text;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// One client of the <see cref="NbdServer"/>: the fixed-newstyle handshake, then the
/// transmission phase. A single reader parses requests (and WRITE payloads) in order and hands
/// each to a worker task, up to <see cref="NbdServerOptions.MaxInFlightPerConnection"/> at once;
/// workers send their replies whole under one send lock, so replies never interleave mid-message.
/// </summary>
internal sealed partial class NbdServerConnection : IAsyncDisposable
{
    /// <summary>Option data we read into memory; longer options are skipped and refused (NBD_REP_ERR_TOO_BIG).</summary>
    private const int MaxOptionData = 64 * 1024;

    /// <summary>An oversized WRITE's payload is read and dropped up to this size, so the connection survives; beyond it we hang up.</summary>
    private const long MaxSkippablePayload = 256L * 1024 * 1024;

    /// <summary>Most content chunks in one sparse READ reply; the rest of the range goes as data.</summary>
    private const int MaxReadChunks = 64;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly NbdServer _server;
    private readonly NbdServerOptions _options;
    private readonly Socket _socket;
    private readonly NetworkStream _network;
    private readonly BufferedStream _input;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly SemaphoreSlim _slots;

    // The state drives these: leaving Transmission cancels _stopReading (the reader stops taking
    // requests), Break cancels _broken (work in flight stops, nothing more is sent).
    private readonly CancellationTokenSource _stopReading = new();
    private readonly CancellationTokenSource _broken = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly byte[] _requestHeader = new byte[NbdConstants.RequestHeaderSize];
    private byte[]? _scratch;

    // Negotiated state. Written only by the handshake, read by the transmission phase after it.
    private bool _fixedNewstyle;
    private bool _noZeroes;
    private bool _structured;
    private IReadOnlyList<NbdMetaContext> _contexts = [];
    private string? _contextsExport;
    private volatile BlockExport? _export;
    private BlockNode? _node;
    private bool _exportReadOnly;

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
        _network = new NetworkStream(socket, ownsSocket: false);
        // Reads of 28-byte headers come from this buffer; large payload reads bypass it.
        _input = new BufferedStream(_network, 64 * 1024);
        _slots = new SemaphoreSlim(_options.MaxInFlightPerConnection, _options.MaxInFlightPerConnection);
    }

    /// <summary>The remote address, for diagnostics.</summary>
    public string Peer { get; }

    /// <summary>The client's end of the connection (a Unix client of this process binds a unique abstract name).</summary>
    public System.Net.EndPoint? RemoteEndPoint { get; }

    /// <summary>The server's end of the connection.</summary>
    public System.Net.EndPoint? LocalEndPoint { get; }

    /// <summary>The export this connection transmits on; null during the handshake.</summary>
    public string? ExportName => _export?.Name;

    /// <summary>Completes when the connection has ended, every request it accepted has finished, and it is disposed.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Why the connection ended (the first Break's reason), or null while it lasts; for diagnostics.</summary>
    public Exception? BreakReason => Volatile.Read(ref _state) >= (int)NbdConnectionState.Broken ? _breakReason : null;

    private NbdConnectionState State => (NbdConnectionState)Volatile.Read(ref _state);

    public async Task RunAsync(CancellationToken serverStopping)
    {
        try
        {
            bool transmit;
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(_broken.Token, serverStopping))
            {
                handshake.CancelAfter(_options.HandshakeTimeout);
                try
                {
                    transmit = await HandshakeAsync(handshake.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!_broken.IsCancellationRequested && !serverStopping.IsCancellationRequested)
                {
                    _server.Log($"NBD client {Peer}: handshake timed out");
                    transmit = false;
                }
            }
            if (transmit && TryMove(NbdConnectionState.Handshake, NbdConnectionState.Transmission))
                await TransmitAsync().ConfigureAwait(false);
        }
        catch (NbdProtocolException e)
        {
            _server.Log($"NBD client {Peer}: {e.Message}; disconnecting");
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
            // Wakes a reader blocked in recv even where cancellation of the read is not honoured.
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        Break(new ObjectDisposedException(nameof(NbdServerConnection)));
        if ((NbdConnectionState)Interlocked.Exchange(ref _state, (int)NbdConnectionState.Closed) == NbdConnectionState.Closed)
            return;
        await _input.DisposeAsync().ConfigureAwait(false);
        await _network.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
        _broken.Dispose();
        _stopReading.Dispose();
        _sendLock.Dispose();
        _slots.Dispose();
        _completion.TrySetResult();
    }

    private bool TryMove(NbdConnectionState from, NbdConnectionState to) =>
        Interlocked.CompareExchange(ref _state, (int)to, (int)from) == (int)from;

    /// <summary>
    /// The one way a connection ends (Npgsql's <c>NpgsqlConnector.Break</c>), whatever ended it: the
    /// first reason is kept, the reader stops, work in flight is cancelled, and the socket is shut
    /// both ways so the client sees the end. Later calls change nothing.
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

    private static bool IsConnectionFailure(Exception e) =>
        e is IOException or SocketException or ObjectDisposedException or OperationCanceledException;

    // ---- low-level I/O --------------------------------------------------------------------

    /// <summary>Reads exactly <paramref name="buffer"/>; false on a clean end of stream before its first byte.</summary>
    private async ValueTask<bool> TryReadExactAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var read = await _input.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
        if (read == 0 && buffer.Length > 0)
            return false;
        if (read < buffer.Length)
            throw new EndOfStreamException("The client closed the connection in the middle of a message");
        return true;
    }

    private async ValueTask ReadExactAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (!await TryReadExactAsync(buffer, cancellationToken).ConfigureAwait(false))
            throw new EndOfStreamException("The client closed the connection in the middle of a message");
    }

    private async ValueTask DiscardAsync(long count, CancellationToken cancellationToken)
    {
        _scratch ??= new byte[64 * 1024];
        while (count > 0)
        {
            var chunk = (int)Math.Min(count, _scratch.Length);
            await ReadExactAsync(_scratch.AsMemory(0, chunk), cancellationToken).ConfigureAwait(false);
            count -= chunk;
        }
    }

    /// <summary>Sends one whole message; replies of concurrent requests queue on the send lock.</summary>
    private async ValueTask SendAsync(ReadOnlyMemory<byte> message)
    {
        await _sendLock.WaitAsync(_broken.Token).ConfigureAwait(false);
        try
        {
            await _network.WriteAsync(message, _broken.Token).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // A half-written reply leaves the stream unframed: the connection cannot go on.
            Break(e);
            throw;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    private static string Decode(ReadOnlySpan<byte> bytes) => StrictUtf8.GetString(bytes);
}
