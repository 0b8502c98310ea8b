using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Tests.Shared;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// A remote node over TLS in the dashboard: its page says the connection is encrypted and whose
/// certificate the server showed. The service serves its export over TLS and connects to it with
/// the same host certificate (the client's credentials default to the server's).
/// </summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardTlsNodeTests(ChromiumFixture chromium) : IAsyncLifetime
{
    private readonly TestCertificates _certs = new();
    private KestrelBlockMirrorFactory _factory = null!;
    private HttpClient _http = null!;
    private DashboardPage _dashboard = null!;

    public async Task InitializeAsync()
    {
        var host = _certs.Issue("/O=BlockMirror/CN=host-a");
        _factory = new KestrelBlockMirrorFactory(new Dictionary<string, string?>
        {
            ["Nbd:Listen"] = "127.0.0.1:0",
            ["Nbd:Tls:CertificatePath"] = host.CertificatePath,
            ["Nbd:Tls:KeyPath"] = host.KeyPath,
            ["Nbd:Tls:ClientCaPath"] = _certs.Ca.CertificatePath,
        });
        _http = _factory.CreateSocketClient();
        _dashboard = await DashboardPage.OpenAsync(chromium, _factory.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        await _dashboard.DisposeAsync();
        _http.Dispose();
        await _factory.DisposeAsync();
        _certs.Dispose();
    }

    [BrowserFact]
    public async Task Tls_remote_node_page_shows_encryption_and_the_server_identity()
    {
        await _http.CreateNodeAsync("disk0", 1 << 20);
        var export = await _http.PostJsonAsync("/api/v1/exports", new { name = "disk0", node = "disk0", writable = true }, HttpStatusCode.Created);
        var uri = (string)export["uri"]!;
        Assert.StartsWith("nbds://127.0.0.1:", uri, StringComparison.Ordinal);
        await _http.PostJsonAsync("/api/v1/nodes", new { name = "remote", driver = "nbd", uri, readOnly = true }, HttpStatusCode.Created);

        await _dashboard.GotoAsync("#/nodes/remote");
        var summary = _dashboard.NodeSummary;
        await Expect(summary.GetByTestId("node-location")).ToHaveTextAsync(uri);
        await Expect(summary.GetByTestId("node-tls")).ToHaveTextAsync("TLS (encrypted, server verified)");
        await Expect(summary.GetByTestId("node-peer")).ToHaveTextAsync("CN=host-a, O=BlockMirror");
        // A local node has no transport to show.
        await _dashboard.GotoAsync("#/nodes/disk0");
        await Expect(_dashboard.NodeSummary.GetByTestId("node-tls")).ToBeHiddenAsync();
    }
}
