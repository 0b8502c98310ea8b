using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Nbd;

/// <summary>The endpoint of an NBD address, to listen on or connect to (one rule for the server and the client).</summary>
internal static class NbdEndPoint
{
    /// <summary>A unix socket by path, else the host's address (host names through DNS, IPv4 preferred) and port.</summary>
    public static async Task<EndPoint> ResolveAsync(string? socketPath, string? host, int port, CancellationToken cancellationToken)
    {
        if (socketPath is { } path)
            return new UnixDomainSocketEndPoint(path);
        if (IPAddress.TryParse(host, out var ip))
            return new IPEndPoint(ip, port);
        var addresses = await Dns.GetHostAddressesAsync(host!, cancellationToken).ConfigureAwait(false);
        var chosen = addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses.FirstOrDefault()
            ?? throw new SocketException((int)SocketError.HostNotFound);
        return new IPEndPoint(chosen, port);
    }
}
