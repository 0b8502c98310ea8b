using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd;

/// <summary>
/// What the NBD server tells the operator, one method a kind of event (source-generated, no
/// formatting unless the level is on). Failures a connection survives or swallows are warnings or
/// errors with the peer they concern; a client refused for TLS is a warning with its own event id
/// (<see cref="RefusedEventId"/>), so that refusals can be told from the rest.
/// </summary>
internal static partial class NbdServerLog
{
    /// <summary>The event of a client refused for TLS (plain client, failed handshake, certificate not trusted or not authorized).</summary>
    public const int RefusedEventId = 3;

    [LoggerMessage(1, LogLevel.Information, "NBD server listening on {EndPoint}")]
    public static partial void Listening(this ILogger logger, string endPoint);

    [LoggerMessage(2, LogLevel.Information, "NBD server stopped")]
    public static partial void Stopped(this ILogger logger);

    [LoggerMessage(RefusedEventId, LogLevel.Warning, "NBD client {Peer} refused: {Reason}")]
    public static partial void ClientRefused(this ILogger logger, string peer, string reason);

    [LoggerMessage(4, LogLevel.Warning, "NBD client {Peer}: {Reason}; disconnecting")]
    public static partial void ProtocolViolation(this ILogger logger, string peer, string reason);

    [LoggerMessage(5, LogLevel.Information, "NBD client {Peer}: handshake timed out")]
    public static partial void HandshakeTimedOut(this ILogger logger, string peer);

    [LoggerMessage(6, LogLevel.Information, "NBD client {Peer}: NBD_OPT_EXPORT_NAME of unknown export '{Export}'")]
    public static partial void UnknownExport(this ILogger logger, string peer, string export);

    [LoggerMessage(7, LogLevel.Error, "NBD client {Peer}: request {Command} failed unexpectedly")]
    public static partial void RequestFailedUnexpectedly(this ILogger logger, Exception exception, string peer, string command);

    [LoggerMessage(8, LogLevel.Warning, "NBD client {Peer}: command {Command} at {Offset} failed: {Reason}")]
    public static partial void CommandFailed(this ILogger logger, string peer, string command, long offset, string reason);

    [LoggerMessage(9, LogLevel.Information, "NBD client {Peer}: TLS {Protocol} session, client certificate {Subject}")]
    public static partial void TlsSession(this ILogger logger, string peer, string protocol, string subject);

    [LoggerMessage(10, LogLevel.Warning, "NBD accept failed: {Reason}")]
    public static partial void AcceptFailed(this ILogger logger, string reason);

    [LoggerMessage(11, LogLevel.Error, "NBD connection {Peer} failed unexpectedly")]
    public static partial void ConnectionFailedUnexpectedly(this ILogger logger, Exception exception, string peer);

    [LoggerMessage(12, LogLevel.Warning, "NBD socket '{Path}' could not be removed: {Reason}")]
    public static partial void SocketNotRemoved(this ILogger logger, string path, string reason);
}
