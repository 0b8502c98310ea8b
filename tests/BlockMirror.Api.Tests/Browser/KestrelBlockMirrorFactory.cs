using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>The service on a real socket (127.0.0.1, a free port): a browser cannot reach the in-memory TestServer.</summary>
public sealed class KestrelBlockMirrorFactory : BlockMirrorFactory
{
    public KestrelBlockMirrorFactory(IDictionary<string, string?>? settings = null)
        : base(settings: settings) => UseKestrel(o => o.Listen(IPAddress.Loopback, 0));

    /// <summary>Starts the server on first use and returns its address, e.g. http://127.0.0.1:40123/.</summary>
    public Uri BaseAddress
    {
        get
        {
            StartServer();
            var addresses = Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
            return new Uri(addresses.First().TrimEnd('/') + "/");
        }
    }

    /// <summary>An HttpClient over the same socket the browser uses.</summary>
    public HttpClient CreateSocketClient() => new() { BaseAddress = BaseAddress };
}
