using System.Net;
using Microsoft.AspNetCore.Http;
using BlockMirror.Api.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Refuses to start on an address that is not one, or on a non-loopback address when no API key is configured.</summary>
public static class ListenGuard
{
    public static void Check(IConfiguration configuration)
    {
        foreach (var url in Urls(configuration))
        {
            try
            {
                _ = BindingAddress.Parse(url);
            }
            catch (FormatException e)
            {
                throw new StartupRefusedException(ExitCodes.Configuration, $"invalid configuration: Urls '{url}' is invalid: {e.Message}");
            }
        }
        var keys = configuration.GetSection(AuthOptions.Section).Get<AuthOptions>()?.ApiKeys ?? [];
        if (keys.Any(k => !string.IsNullOrEmpty(k)))
            return;
        foreach (var url in Urls(configuration))
        {
            if (!IsLoopback(url))
                throw new StartupRefusedException(ExitCodes.Configuration, $"Refusing to listen on '{url}' without Auth:ApiKeys: configure API keys or bind to 127.0.0.1");
        }
    }

    /// <summary>The REST server's addresses as configured (<c>Urls</c>, or <c>ASPNETCORE_URLS</c>).</summary>
    public static IEnumerable<string> Urls(IConfiguration configuration) =>
        (configuration["Urls"] ?? configuration["ASPNETCORE_URLS"] ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static bool IsLoopback(string url)
    {
        if (!Uri.TryCreate(url.Replace("://*", "://wildcard", StringComparison.Ordinal).Replace("://+", "://wildcard", StringComparison.Ordinal), UriKind.Absolute, out var uri))
            return false;
        if (uri.Host == "localhost")
            return true;
        return IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip);
    }
}
