using System.Net;
using BlockMirror.Api.Options;
using BlockMirror.Core;
using BlockMirror.Nbd;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Runs the NBD server beside the REST API (Nbd:Listen; empty = off). Started after the block
/// layer is loaded, stopped before it stops, so no export outlives its node.
/// </summary>
public sealed partial class NbdHost(BlockLayer layer, IOptions<NbdOptions> options, BlockMirrorMetrics metrics, ILogger<NbdHost> logger) : IStartupParticipant
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
            throw new InvalidOperationException($"Nbd:Listen '{listen}' is invalid: {error}");
        var server = new NbdServer(layer, new NbdServerOptions
        {
            Listen = address,
            Log = m => LogNbd(logger, m),
            RequestReceived = (export, command) => metrics.NbdRequests.Add(1,
                new KeyValuePair<string, object?>("export", export), new KeyValuePair<string, object?>("command", command)),
        });
        await server.StartAsync(cancellationToken);
        _server = server;
        LogListening(logger, server.LocalEndPoint.ToString() ?? listen);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is { } server)
            await server.DisposeAsync();
        _server = null;
    }

    [LoggerMessage(1, LogLevel.Information, "NBD server listening on {EndPoint}")]
    private static partial void LogListening(ILogger logger, string endPoint);

    [LoggerMessage(2, LogLevel.Debug, "NBD: {Message}")]
    private static partial void LogNbd(ILogger logger, string message);
}
