using System.Globalization;
using System.Net;
using System.Net.Sockets;
using BlockMirror.Core;

namespace BlockMirror.Nbd;

/// <summary>
/// A parsed NBD URI (the subset of the NBD URI spec QEMU and libnbd share that we support):
/// <c>nbd://host[:port]/export</c> over TCP (port 10809 by default) and
/// <c>nbd+unix:///export?socket=/path.sock</c> over a Unix socket, and their TLS forms
/// <c>nbds://</c> and <c>nbds+unix://</c>, where TLS is required (libnbd's meaning: the connection
/// fails if the server does not offer it). The export name is the percent-decoded path without its
/// leading '/'.
/// </summary>
public sealed class NbdUri
{
    private NbdUri(string text, string? host, int port, string? socketPath, string exportName, bool tls)
    {
        Text = text;
        Tls = tls;
        Host = host;
        Port = port;
        SocketPath = socketPath;
        ExportName = exportName;
    }

    /// <summary>The URI as given.</summary>
    public string Text { get; }

    /// <summary>The TCP host (without IPv6 brackets); null for a Unix socket.</summary>
    public string? Host { get; }

    /// <summary>The TCP port; 0 for a Unix socket.</summary>
    public int Port { get; }

    /// <summary>The Unix socket path; null for TCP.</summary>
    public string? SocketPath { get; }

    /// <summary>TLS is required (an <c>nbds</c> scheme).</summary>
    public bool Tls { get; }

    /// <summary>The export name (may be empty: the server's default export).</summary>
    public string ExportName { get; }

    /// <summary>The longest Unix socket path Linux can connect to, in bytes (sun_path without its NUL).</summary>
    private const int MaxSocketPathBytes = 107;

    /// <summary>Parses <paramref name="uri"/>; throws <see cref="BlockException"/> <c>invalid-uri</c>.</summary>
    public static NbdUri Parse(string uri)
    {
        if (string.IsNullOrWhiteSpace(uri))
            throw Invalid(uri ?? "", "it is empty");
        var schemeEnd = uri.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd <= 0)
            throw Invalid(uri, "expected nbd://host[:port]/export or nbd+unix:///export?socket=/path");
        var scheme = uri[..schemeEnd].ToLowerInvariant();
        var rest = uri[(schemeEnd + 3)..];
        string? query = null;
        var q = rest.IndexOf('?', StringComparison.Ordinal);
        if (q >= 0)
        {
            query = rest[(q + 1)..];
            rest = rest[..q];
        }
        if (rest.Contains('#', StringComparison.Ordinal))
            throw Invalid(uri, "fragments are not allowed");
        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        var authority = slash < 0 ? rest : rest[..slash];
        var path = slash < 0 ? "" : rest[(slash + 1)..];
        if (!TryPercentDecode(path, out var exportName))
            throw Invalid(uri, "the export name is not valid percent-encoded UTF-8");
        if (exportName.Length > 4096 || exportName.Contains('\0', StringComparison.Ordinal))
            throw Invalid(uri, "the export name is too long or contains NUL");
        var parameters = ParseQuery(uri, query);
        var tls = scheme.StartsWith("nbds", StringComparison.Ordinal);

        switch (scheme)
        {
            case "nbd":
            case "nbd+tcp":
            case "nbds":
            case "nbds+tcp":
                {
                    if (parameters.Count > 0)
                        throw Invalid(uri, $"unknown parameter '{parameters.Keys.First()}'");
                    var (host, port) = ParseAuthority(uri, authority);
                    return new NbdUri(uri, host, port, null, exportName, tls);
                }
            case "nbd+unix":
            case "nbds+unix":
                {
                    if (authority.Length > 0)
                        throw Invalid(uri, "nbd+unix URIs take no host (write nbd+unix:///export?socket=/path)");
                    if (!parameters.TryGetValue("socket", out var socket) || socket.Length == 0)
                        throw Invalid(uri, "nbd+unix needs ?socket=/path");
                    if (parameters.Count > 1)
                        throw Invalid(uri, $"unknown parameter '{parameters.Keys.First(k => k != "socket")}'");
                    // sockaddr_un.sun_path holds 108 bytes with the terminating NUL; a longer path cannot be connected to.
                    if (System.Text.Encoding.UTF8.GetByteCount(socket) > MaxSocketPathBytes || socket.Contains('\0', StringComparison.Ordinal))
                        throw Invalid(uri, $"the socket path is longer than {MaxSocketPathBytes} bytes or contains NUL");
                    return new NbdUri(uri, null, 0, socket, exportName, tls);
                }
            default:
                throw Invalid(uri, $"unknown scheme '{scheme}' (expected nbd, nbds, nbd+unix or nbds+unix)");
        }
    }

    /// <summary>The endpoint to connect to (host names resolved, IPv4 preferred).</summary>
    public Task<EndPoint> ResolveAsync(CancellationToken cancellationToken = default) =>
        NbdEndPoint.ResolveAsync(SocketPath, Host, Port, cancellationToken);

    /// <inheritdoc />
    public override string ToString() => Text;

    /// <summary>
    /// <paramref name="uri"/> with TLS required: its scheme's <c>nbd</c> becomes <c>nbds</c>
    /// (<c>nbd://h/e</c> → <c>nbds://h/e</c>, <c>nbd+unix://…</c> → <c>nbds+unix://…</c>); a TLS URI is
    /// returned as it is. Throws <c>invalid-uri</c> as <see cref="Parse"/>.
    /// </summary>
    public static string WithTls(string uri)
    {
        if (Parse(uri).Tls)
            return uri;
        var schemeEnd = uri.IndexOf("://", StringComparison.Ordinal);
        return "nbds" + uri[3..schemeEnd].ToLowerInvariant() + uri[schemeEnd..];
    }

    private static (string Host, int Port) ParseAuthority(string uri, string authority)
    {
        if (authority.Contains('@', StringComparison.Ordinal))
            throw Invalid(uri, "user information is not allowed");
        string host;
        string? portText = null;
        if (authority.StartsWith('['))
        {
            var close = authority.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
                throw Invalid(uri, "unterminated IPv6 address");
            host = authority[1..close];
            var after = authority[(close + 1)..];
            if (after.Length > 0)
            {
                if (after[0] != ':')
                    throw Invalid(uri, "junk after the IPv6 address");
                portText = after[1..];
            }
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
                throw Invalid(uri, $"'{host}' is not an IPv6 address");
        }
        else
        {
            var colon = authority.IndexOf(':', StringComparison.Ordinal);
            host = colon < 0 ? authority : authority[..colon];
            if (colon >= 0)
                portText = authority[(colon + 1)..];
        }
        if (host.Length == 0)
            throw Invalid(uri, "the host is missing");
        if (Uri.CheckHostName(host) == UriHostNameType.Unknown)
            throw Invalid(uri, $"'{host}' is not a valid host");
        var port = 10809;
        if (portText is not null
            && (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535))
        {
            throw Invalid(uri, $"'{portText}' is not a valid port");
        }
        return (host, port);
    }

    private static Dictionary<string, string> ParseQuery(string uri, string? query)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (string.IsNullOrEmpty(query))
            return result;
        foreach (var pair in query.Split('&'))
        {
            if (pair.Length == 0)
                continue;
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            var key = eq < 0 ? pair : pair[..eq];
            var value = eq < 0 ? "" : pair[(eq + 1)..];
            if (!TryPercentDecode(value, out value))
                throw Invalid(uri, $"parameter '{key}' is not valid percent-encoded UTF-8");
            if (!result.TryAdd(key, value))
                throw Invalid(uri, $"parameter '{key}' is given twice");
        }
        return result;
    }

    /// <summary>Strict RFC 3986 decoding: every '%' must start two hex digits, and the bytes must be UTF-8.</summary>
    private static bool TryPercentDecode(string text, out string decoded)
    {
        decoded = text;
        if (!text.Contains('%', StringComparison.Ordinal))
            return true;
        var bytes = new List<byte>(text.Length);
        var i = 0;
        while (i < text.Length)
        {
            var next = text.IndexOf('%', i);
            if (next < 0)
                next = text.Length;
            if (next > i)
            {
                // Literal runs are encoded whole so surrogate pairs stay together.
                bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(text[i..next]));
                i = next;
                continue;
            }
            if (i + 2 >= text.Length || !byte.TryParse(text.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var b))
                return false;
            bytes.Add(b);
            i += 3;
        }
        try
        {
            decoded = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetString([.. bytes]);
            return true;
        }
        catch (System.Text.DecoderFallbackException)
        {
            return false;
        }
    }

    private static BlockException Invalid(string uri, string why) =>
        BlockErrors.Invalid("invalid-uri", $"Invalid NBD URI '{BlockErrors.Shorten(uri)}': {why}");
}
