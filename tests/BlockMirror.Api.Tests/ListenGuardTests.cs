using BlockMirror.Api.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace BlockMirror.Api.Tests;

/// <summary>
/// The guard that refuses a public REST address without API keys sees the addresses Kestrel will
/// bind, however they are configured: Urls / --urls / ASPNETCORE_URLS, HTTP_PORTS, and
/// Kestrel:Endpoints, which override Urls (it used to read Urls only, so a public endpoint in
/// Kestrel:Endpoints beside a loopback Urls went unguarded).
/// </summary>
public sealed class ListenGuardTests
{
    private static IConfiguration Config(params (string Key, string Value)[] settings) =>
        new ConfigurationBuilder().AddInMemoryCollection(settings.Select(s => new KeyValuePair<string, string?>(s.Key, s.Value))).Build();

    [Fact]
    public void A_public_Kestrel_endpoint_beside_a_loopback_Urls_is_refused_without_keys()
    {
        var config = Config(("Urls", "http://127.0.0.1:5080"), ("Kestrel:Endpoints:Api:Url", "http://0.0.0.0:5080"));
        var refused = Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(config));
        Assert.Equal(ExitCodes.Configuration, refused.ExitCode);
        Assert.Contains("'http://0.0.0.0:5080' (Kestrel:Endpoints:Api:Url)", refused.Message, StringComparison.Ordinal);
        ListenGuard.Check(Config(("Urls", "http://127.0.0.1:5080"), ("Kestrel:Endpoints:Api:Url", "http://0.0.0.0:5080"), ("Auth:ApiKeys:0", "k")));
    }

    [Fact]
    public void Loopback_Kestrel_endpoints_override_a_public_Urls()
    {
        ListenGuard.Check(Config(("Urls", "http://0.0.0.0:5080"), ("Kestrel:Endpoints:A:Url", "http://127.0.0.1:5080"), ("Kestrel:Endpoints:B:Url", "http://[::1]:5081")));
        // Unless the hosting URLs are preferred: then Urls is what Kestrel binds.
        Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(Config(
            ("Urls", "http://0.0.0.0:5080"), ("Kestrel:Endpoints:A:Url", "http://127.0.0.1:5080"), ("preferHostingUrls", "true"))));
    }

    [Fact]
    public void Ports_without_urls_listen_on_every_interface_and_are_refused_without_keys()
    {
        var refused = Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(Config(("HTTP_PORTS", "8080"))));
        Assert.Contains("'http://*:8080' (HTTP_PORTS)", refused.Message, StringComparison.Ordinal);
        Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(Config(("HTTPS_PORTS", "8443"))));
        // Urls wins over the ports, as in ASP.NET Core.
        ListenGuard.Check(Config(("Urls", "http://127.0.0.1:5080"), ("HTTP_PORTS", "8080")));
    }

    [Fact]
    public void Local_sockets_and_the_default_address_pass_and_an_endpoint_without_a_url_is_a_configuration_error()
    {
        ListenGuard.Check(Config(("Urls", "http://unix:/run/blockmirror/api.sock")));
        ListenGuard.Check(Config());
        Assert.Equal(["http://localhost:5000"], ListenGuard.Addresses(Config()).Select(a => a.Url));
        var invalid = Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(Config(("Kestrel:Endpoints:Api:Protocols", "Http1"))));
        Assert.Equal(ExitCodes.Configuration, invalid.ExitCode);
        Assert.Contains("Kestrel:Endpoints:Api:Url", invalid.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// The guard's prediction against Kestrel itself: a bare web application started with the same
    /// command line (what <c>--urls</c> and friends become), and the addresses it really bound.
    /// </summary>
    [Theory]
    [InlineData("--urls=http://127.0.0.1:0")]
    [InlineData("--urls=http://127.0.0.1:0", "--Kestrel:Endpoints:Pub:Url=http://0.0.0.0:0")]
    [InlineData("--urls=http://0.0.0.0:0", "--Kestrel:Endpoints:Lo:Url=http://127.0.0.1:0")]
    [InlineData("--urls=http://127.0.0.1:0", "--Kestrel:Endpoints:Pub:Url=http://0.0.0.0:0", "--preferHostingUrls=true")]
    [InlineData("--http_ports=0")]
    [InlineData("--urls=http://127.0.0.1:0;http://0.0.0.0:0")]
    public async Task The_predicted_addresses_are_the_ones_Kestrel_binds(params string[] args)
    {
        var contentRoot = Directory.CreateTempSubdirectory("blockmirror-listen-").FullName;
        try
        {
            var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = contentRoot });
            var predicted = ListenGuard.Addresses(builder.Configuration);
            await using var app = builder.Build();
            await app.StartAsync();
            var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.ToList();
            await app.StopAsync();
            Assert.Equal(bound.Select(ListenGuard.IsLocal), predicted.Select(a => ListenGuard.IsLocal(a.Url)));
        }
        finally
        {
            Directory.Delete(contentRoot, recursive: true);
        }
    }
}
