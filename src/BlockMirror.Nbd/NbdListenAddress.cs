using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Nbd;

/// <summary>
/// Where the NBD server listens: <c>host:port</c> (IPv4, <c>[IPv6]</c> or a host name; port 0
/// picks a free port) or <c>unix:/path.sock</c> for a Unix domain socket.
/// </summary>
public sealed class NbdListenAddress
{
    private NbdListenAddress(string? host, int port, string? socketPath)
    {
        Host = host;
        Port = port;
        SocketPath = socketPath;
    }

    /// <summary>The host part of a TCP address (without brackets); null for a Unix socket.</summary>
    public string? Host { get; }

    /// <summary>The TCP port (0 = any free port); 0 for a Unix socket.</summary>
    public int Port { get; }

    /// <summary>The socket path of a Unix address; null for TCP.</summary>
    public string? SocketPath { get; }

    /// <summary>True for a Unix domain socket.</summary>
    public bool IsUnix => SocketPath is not null;

    /// <summary>A TCP address.</summary>
    public static NbdListenAddress Tcp(string host, int port)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(host);
        ArgumentOutOfRangeException.ThrowIfNegative(port);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        return new NbdListenAddress(host, port, null);
    }

    /// <summary>A Unix domain socket address.</summary>
    public static NbdListenAddress Unix(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return new NbdListenAddress(null, 0, path);
    }

    /// <summary>Parses <c>host:port</c>, <c>[v6]:port</c> or <c>unix:/path</c>; throws <see cref="FormatException"/>.</summary>
    public static NbdListenAddress Parse(string text) =>
        TryParse(text, out var address, out var error) ? address : throw new FormatException(error);

    /// <summary>Parses like <see cref="Parse"/>, reporting why a text is refused.</summary>
    public static bool TryParse(string? text, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdListenAddress? address, out string? error)
    {
        address = null;
        error = null;
        text = text?.Trim();
        if (string.IsNullOrEmpty(text))
        {
            error = "The NBD listen address is empty";
            return false;
        }
        if (text.StartsWith("unix:", StringComparison.Ordinal))
        {
            var path = text["unix:".Length..];
            if (path.Length == 0 || path.Contains('\0', StringComparison.Ordinal))
            {
                error = $"'{text}' has no usable socket path (expected unix:/path.sock)";
                return false;
            }
            address = new NbdListenAddress(null, 0, path);
            return true;
        }

        string host;
        string portText;
        if (text.StartsWith('['))
        {
            var close = text.IndexOf(']', StringComparison.Ordinal);
            if (close < 0 || close + 1 >= text.Length || text[close + 1] != ':')
            {
                error = $"'{text}' is not [IPv6]:port";
                return false;
            }
            host = text[1..close];
            portText = text[(close + 2)..];
        }
        else
        {
            var colon = text.LastIndexOf(':');
            if (colon <= 0 || text.IndexOf(':', StringComparison.Ordinal) != colon)
            {
                error = $"'{text}' is not host:port (write IPv6 addresses as [addr]:port)";
                return false;
            }
            host = text[..colon];
            portText = text[(colon + 1)..];
        }
        if (host.Length == 0
            || !int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var port)
            || port > 65535)
        {
            error = $"'{text}' has no valid host and port (0-65535)";
            return false;
        }
        address = new NbdListenAddress(host, port, null);
        return true;
    }

    /// <summary>Resolves the address to an endpoint to bind (host names through DNS, IPv4 preferred).</summary>
    public Task<EndPoint> ResolveAsync(CancellationToken cancellationToken = default) =>
        NbdEndPoint.ResolveAsync(SocketPath, Host, Port, cancellationToken);

    /// <inheritdoc />
    public override string ToString() =>
        SocketPath is { } path ? $"unix:{path}"
        : Host!.Contains(':', StringComparison.Ordinal) ? $"[{Host}]:{Port.ToString(CultureInfo.InvariantCulture)}"
        : $"{Host}:{Port.ToString(CultureInfo.InvariantCulture)}";
}
