using System.Net;
using System.Net.Sockets;
using BlockMirror.Api.Options;
using BlockMirror.Core;
using BlockMirror.Nbd;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Runs the NBD server beside the REST API (Nbd:Listen; empty = off). Started after the block
/// layer is loaded, stopped before it stops, so no export outlives its node.
/// </summary>
public sealed partial class NbdHost(BlockLayer layer, IOptions<NbdOptions> options, NbdTlsCredentials tls, ConnectionBudget budget, BlockMirrorMetrics metrics, ILogger<NbdHost> logger, ILogger<NbdServer> serverLogger) : IStartupParticipant
{
    private NbdServer? _server;

    /// <summary>The running server, or null when NBD is off.</summary>
    public NbdServer? Server => _server;

    /// <summary>Where the server listens (TCP endpoint or unix socket), for clients and tests.</summary>
    public EndPoint? LocalEndPoint => _server?.LocalEndPoint;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var listen = options.Value.Listen;
        if (string.IsNullOrWhiteSpace(listen))
            return;
        if (!NbdListenAddress.TryParse(listen, out var address, out var error))
            throw new StartupRefusedException(ExitCodes.Configuration, $"Nbd:Listen '{listen}' is invalid: {error}");
        var server = new NbdServer(layer, new NbdServerOptions
        {
            Listen = address,
            MaxConnections = budget.NbdConnections,
            HandshakeTimeout = options.Value.HandshakeTimeout,
            Tls = tls.Server,
            RequestReceived = (export, command) => metrics.NbdRequests.Add(1,
                new KeyValuePair<string, object?>("export", export), new KeyValuePair<string, object?>("command", command)),
        }, serverLogger);
        try
        {
            await server.StartAsync(cancellationToken);
        }
        catch (SocketException e)
        {
            await server.DisposeAsync();
            // A port or a socket another server listens on: a second server there would share or steal its clients.
            throw new StartupRefusedException(
                e.SocketErrorCode == SocketError.AddressAlreadyInUse ? ExitCodes.InUse : ExitCodes.Configuration,
                $"cannot listen for NBD on {listen} (Nbd:Listen): {e.Message}" +
                (e.SocketErrorCode == SocketError.AddressAlreadyInUse ? "; another BlockMirror or NBD server listens there" : ""), e);
        }
        _server = server;
        LogListening(logger, server.LocalEndPoint.ToString() ?? listen, tls.Server is { } t ? $"TLS required, certificate {t.Subject}" : "no TLS");
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is { } server)
            await server.DisposeAsync();
        _server = null;
    }

    [LoggerMessage(1, LogLevel.Information, "NBD server listening on {EndPoint} ({Tls})")]
    private static partial void LogListening(ILogger logger, string endPoint, string tls);
}
