using System.Net;
using Microsoft.AspNetCore.Http;
using BlockMirror.Api.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Refuses to start on an address that is not one, or on a non-loopback address when no API key is
/// configured (the API can create, overwrite and delete images). It runs before anything starts, so
/// it predicts the addresses the way ASP.NET Core resolves them at bind time rather than asking
/// Kestrel afterwards, when the port would already be open.
/// </summary>
public static class ListenGuard
{
    // WebHostDefaults' keys, read from the same configuration the web host reads them from: command
    // line (--urls), environment (ASPNETCORE_URLS and URLS become "urls"), appsettings.json.
    private const string UrlsKey = "urls";
    private const string HttpPortsKey = "http_ports";
    private const string HttpsPortsKey = "https_ports";
    private const string PreferHostingUrlsKey = "preferHostingUrls";
    private const string EndpointsSection = "Kestrel:Endpoints";

    /// <summary>ASP.NET Core's address when nothing is configured (Kestrel's DefaultAddressStrategy).</summary>
    private const string DefaultUrl = "http://localhost:5000";

    public static void Check(IConfiguration configuration)
    {
        var addresses = Addresses(configuration);
        foreach (var address in addresses)
        {
            try
            {
                _ = BindingAddress.Parse(address.Url);
            }
            catch (FormatException e)
            {
                throw new StartupRefusedException(ExitCodes.Configuration, $"invalid configuration: {address.Setting} '{address.Url}' is invalid: {e.Message}");
            }
        }
        var keys = configuration.GetSection(AuthOptions.Section).Get<AuthOptions>()?.ApiKeys ?? [];
        if (keys.Any(k => !string.IsNullOrEmpty(k)))
            return;
        foreach (var address in addresses)
        {
            if (!IsLocal(address.Url))
                throw new StartupRefusedException(ExitCodes.Configuration,
                    $"Refusing to listen on '{address.Url}' ({address.Setting}) without Auth:ApiKeys: configure API keys or bind to 127.0.0.1");
        }
    }

    /// <summary>
    /// The REST server's addresses, as Kestrel chooses them (AddressBinder's strategies): the
    /// endpoints of <c>Kestrel:Endpoints</c> when there are any, which then override <c>urls</c>
    /// (unless <c>preferHostingUrls</c> is true and <c>urls</c> is set); otherwise <c>urls</c>
    /// (<c>Urls</c>, <c>--urls</c>, <c>ASPNETCORE_URLS</c>); without it <c>HTTP_PORTS</c> and
    /// <c>HTTPS_PORTS</c> (.NET 8+, each port on every interface); without any, localhost:5000.
    /// </summary>
    public static IReadOnlyList<ListenAddress> Addresses(IConfiguration configuration)
    {
        var urls = HostingUrls(configuration);
        var endpoints = Endpoints(configuration);
        if (endpoints.Count > 0 && !(PreferHostingUrls(configuration) && urls.Count > 0))
            return endpoints;
        if (urls.Count > 0)
            return urls;
        return [new ListenAddress(DefaultUrl, "the ASP.NET Core default")];
    }

    /// <summary>What the web host hands Kestrel as its addresses (GenericWebHostService).</summary>
    private static List<ListenAddress> HostingUrls(IConfiguration configuration)
    {
        var urls = Split(configuration[UrlsKey]);
        if (urls.Count > 0)
            return [.. urls.Select(u => new ListenAddress(u, "Urls"))];
        return
        [
            .. Split(configuration[HttpPortsKey]).Select(p => new ListenAddress($"http://*:{p}", "HTTP_PORTS")),
            .. Split(configuration[HttpsPortsKey]).Select(p => new ListenAddress($"https://*:{p}", "HTTPS_PORTS")),
        ];
    }

    /// <summary>Kestrel's configured endpoints; one without a URL is named by its key (Kestrel refuses it at bind, we before).</summary>
    private static List<ListenAddress> Endpoints(IConfiguration configuration) =>
        [.. configuration.GetSection(EndpointsSection).GetChildren()
            .Select(e => new ListenAddress(e["Url"] ?? "", $"{EndpointsSection}:{e.Key}:Url"))];

    private static bool PreferHostingUrls(IConfiguration configuration) =>
        configuration[PreferHostingUrlsKey] is { } value &&
        (string.Equals(value, "true", StringComparison.OrdinalIgnoreCase) || value == "1");

    private static List<string> Split(string? value) =>
        [.. (value ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

    /// <summary>Reachable only from this host: a loopback address, localhost, or a unix socket / named pipe (file permissions guard it).</summary>
    public static bool IsLocal(string url)
    {
        var binding = BindingAddress.Parse(url);
        if (binding.IsUnixPipe || binding.IsNamedPipe)
            return true;
        if (binding.Host == "localhost")
            return true;
        return IPAddress.TryParse(binding.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip);
    }
}
