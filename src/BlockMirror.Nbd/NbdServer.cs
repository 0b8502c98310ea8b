using System.Net;
using System.Net.Sockets;
using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Nbd;

/// <summary>
/// The NBD server: serves the exports registered in a <see cref="BlockLayer"/> (fixed newstyle
/// handshake, structured replies, <c>base:allocation</c> and <c>qemu:dirty-bitmap:NAME</c> block
/// status) on a TCP or Unix socket. Every write goes through the node's write path, so bitmaps
/// record it and an active mirror sees it. Exports are looked up when a client selects one, so
/// exports added after <see cref="StartAsync"/> are served without restarting.
/// </summary>
public sealed class NbdServer : IExportServer, IAsyncDisposable
{
    private readonly Lock _lock = new();
    private readonly HashSet<NbdServerConnection> _connections = [];
    private readonly CancellationTokenSource _stopping = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private EndPoint? _localEndPoint;
    private string? _unixPath;
    private int _state; // 0 new, 1 started, 2 stopped

    /// <summary>Creates a server over <paramref name="layer"/>'s export registry; nothing listens until <see cref="StartAsync"/>.</summary>
    public NbdServer(BlockLayer layer, NbdServerOptions options, ILogger<NbdServer>? logger = null)
    {
        ArgumentNullException.ThrowIfNull(layer);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightPerConnection, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxConnections, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxBlockStatusExtents, 1);
        Layer = layer;
        Options = options;
        Logger = logger ?? NullLogger<NbdServer>.Instance;
    }

    /// <summary>The block layer whose exports are served.</summary>
    public BlockLayer Layer { get; }

    /// <summary>The settings the server was created with.</summary>
    public NbdServerOptions Options { get; }

    /// <summary>Where the server and its connections say what went wrong (the host's logging).</summary>
    internal ILogger Logger { get; }

    /// <summary>The address actually bound (the real port when 0 was asked for).</summary>
    public EndPoint LocalEndPoint => _localEndPoint ?? throw new InvalidOperationException("The NBD server is not started");

    /// <summary>Connections currently open (in handshake or transmission).</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_lock)
                return _connections.Count;
        }
    }

    /// <summary>The connections open now (tests look at how their replies were sent).</summary>
    internal IReadOnlyList<NbdServerConnection> OpenConnections
    {
        get
        {
            lock (_lock)
                return [.. _connections];
        }
    }

    /// <summary>Binds the listening socket and starts accepting clients.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
            throw new InvalidOperationException("The NBD server was already started");
        var endPoint = await Options.Listen.ResolveAsync(cancellationToken).ConfigureAwait(false);
        Socket listener;
        if (endPoint is UnixDomainSocketEndPoint)
        {
            var path = Options.Listen.SocketPath!;
            RemoveStaleSocket(path);
            listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            _unixPath = path;
        }
        else
        {
            listener = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            // No SocketOptionName.ReuseAddress: on Linux .NET maps it to SO_REUSEPORT as well, and then
            // a second server binds the same port and the kernel spreads clients over both (a client
            // could write to the other instance's export of the same name). A restarted service still
            // rebinds while old connections sit in TIME_WAIT: .NET's Bind sets SO_REUSEADDR itself for
            // TCP on Unix (strace shows it; Kestrel's listener gets the same), and SO_REUSEADDR alone
            // never lets two sockets listen on one port.
        }
        try
        {
            listener.Bind(endPoint);
            listener.Listen(512);
        }
        catch
        {
            listener.Dispose();
            _unixPath = null;
            throw;
        }
        _listener = listener;
        _localEndPoint = listener.LocalEndPoint;
        Logger.Listening(Describe(_localEndPoint));
        _acceptLoop = Task.Run(AcceptLoopAsync, CancellationToken.None);
        Layer.AttachExportServer(this);
    }

    /// <summary>
    /// The export an NBD image of this process reaches through this server, recognised by the
    /// connection, not by its URI, which can name this server in many ways: over TCP both ends of
    /// the connection match one of ours; over a Unix socket (whose clients have no address) the
    /// socket file it connected to is our listener's (same inode), and we serve its export.
    /// </summary>
    public string? ExportServing(IBlockImage image)
    {
        if (image is not NbdImage nbd || nbd.Client is not { IsClosed: false } client)
            return null;
        lock (_lock)
        {
            foreach (var c in _connections)
            {
                if (c.ExportName is not { } name)
                    continue;
                if (client.LocalEndPoint is IPEndPoint && SameEnd(c.RemoteEndPoint, client.LocalEndPoint) && SameEnd(c.LocalEndPoint, client.RemoteEndPoint))
                    return name;
                if (client.RemoteEndPoint is UnixDomainSocketEndPoint && name == client.ExportName && IsOurSocket(client.RemoteEndPoint))
                    return name;
            }
        }
        return null;
    }

    private static bool SameEnd(EndPoint? a, EndPoint? b) =>
        a is IPEndPoint x && b is IPEndPoint y && x.Port == y.Port && Normal(x.Address).Equals(Normal(y.Address));

    private bool IsOurSocket(EndPoint connectedTo) =>
        _unixPath is { } ours && connectedTo.ToString() is { Length: > 0 } path
        && ImageStamp.Read(Path.GetFullPath(path)) is { } theirs && ImageStamp.Read(ours) is { } mine && theirs.Inode == mine.Inode;

    private static IPAddress Normal(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;

    /// <summary>
    /// Stops accepting, lets in-flight requests finish (up to <see cref="NbdServerOptions.StopGracePeriod"/>),
    /// then closes every connection. Safe to call more than once.
    /// </summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _state, 2) != 1)
            return;
        Layer.DetachExportServer(this);
        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener?.Dispose();
        if (_acceptLoop is { } loop)
            await loop.ConfigureAwait(false);
        NbdServerConnection[] open;
        lock (_lock)
            open = [.. _connections];
        await CloseAllAsync(open).ConfigureAwait(false);
        if (_unixPath is { } path)
            TryDelete(path);
        Logger.Stopped();
    }

    /// <summary>
    /// Closes every connection using export <paramref name="name"/> (call after the export was removed
    /// from the layer). Requests already running finish first. Returns how many were closed.
    /// </summary>
    public int DisconnectExport(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        NbdServerConnection[] victims;
        lock (_lock)
            victims = [.. _connections.Where(c => c.ExportName == name)];
        foreach (var c in victims)
            c.BeginClose(Options.StopGracePeriod);
        return victims.Length;
    }

    /// <summary>Stops the server.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _state) == 0)
            Interlocked.Exchange(ref _state, 2);
        await StopAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        var listener = _listener!;
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = _unixPath is null
                    ? await listener.AcceptAsync(_stopping.Token).ConfigureAwait(false)
                    : await AcceptUnixAsync(listener).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException) when (_stopping.IsCancellationRequested)
            {
                return; // the listener was closed under a blocking accept
            }
            catch (SocketException e)
            {
                // Transient (ECONNABORTED, EMFILE): keep serving the others.
                Logger.AcceptFailed(e.Message);
                if (e.SocketErrorCode is SocketError.TooManyOpenSockets)
                    await Task.Delay(50, CancellationToken.None).ConfigureAwait(false);
                continue;
            }

            NbdServerConnection connection;
            lock (_lock)
            {
                if (_connections.Count >= Options.MaxConnections || _stopping.IsCancellationRequested)
                {
                    socket.Dispose();
                    continue;
                }
                connection = new NbdServerConnection(this, socket);
                _connections.Add(connection);
            }
            _ = RunConnectionAsync(connection);
        }
    }

    /// <summary>
    /// Accepts on a Unix socket with the blocking accept, on a thread of its own. .NET's asynchronous
    /// accept copies the peer's address into a buffer sized for the listener's own address, and throws
    /// ArgumentException ("Destination is too short") when a client bound its socket to a longer
    /// name: any local user could stop the server taking clients. The blocking accept does not.
    /// </summary>
    private static Task<Socket> AcceptUnixAsync(Socket listener) =>
        Task.Factory.StartNew(listener.Accept, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private async Task RunConnectionAsync(NbdServerConnection connection)
    {
        try
        {
            await connection.RunAsync(_stopping.Token).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // RunAsync handles its own failures; this is the last line that keeps the server alive.
            Logger.ConnectionFailedUnexpectedly(e, connection.Peer);
        }
        finally
        {
            lock (_lock)
                _connections.Remove(connection);
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task CloseAllAsync(NbdServerConnection[] open)
    {
        foreach (var c in open)
            c.BeginClose(Options.StopGracePeriod);
        foreach (var c in open)
            await c.Completion.ConfigureAwait(false);
    }

    private void RemoveStaleSocket(string path)
    {
        // A socket file left by a killed process makes bind fail with EADDRINUSE. Remove it only
        // when it is a socket (open(2) of a socket fails with ENXIO; a regular file opens) and
        // nobody accepts on it any more (a live server must not be unlinked under its clients).
        if (!File.Exists(path))
            return;
        try
        {
            using (File.OpenHandle(path, FileMode.Open, FileAccess.Read))
            {
            }
            return;
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
            return;
        }
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return;
        }
        catch (SocketException)
        {
        }
        TryDelete(path);
    }

    private void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A socket file left behind is removed by the next start (RemoveStaleSocket).
            Logger.SocketNotRemoved(path, e.Message);
        }
    }

    private static string Describe(EndPoint? endPoint) => endPoint switch
    {
        UnixDomainSocketEndPoint u => $"unix:{u}",
        null => "?",
        _ => endPoint.ToString() ?? "?",
    };
}
