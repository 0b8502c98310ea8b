using System.Net;
using BlockMirror.Api.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Refuses to start on a non-loopback address when no API key is configured.</summary>
public static class ListenGuard
{
    public static void Check(IConfiguration configuration)
    {
        var keys = configuration.GetSection(AuthOptions.Section).Get<AuthOptions>()?.ApiKeys ?? [];
        if (keys.Any(k => !string.IsNullOrEmpty(k)))
            return;
        var urls = configuration["Urls"] ?? configuration["ASPNETCORE_URLS"] ?? "";
        foreach (var url in urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!IsLoopback(url))
                throw new InvalidOperationException($"Refusing to listen on '{url}' without Auth:ApiKeys: configure API keys or bind to 127.0.0.1");
        }
    }

    private static bool IsLoopback(string url)
    {
        if (!Uri.TryCreate(url.Replace("://*", "://wildcard", StringComparison.Ordinal).Replace("://+", "://wildcard", StringComparison.Ordinal), UriKind.Absolute, out var uri))
            return false;
        if (uri.Host == "localhost")
            return true;
        return IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip);
    }
}
