using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// Two services, each as a host would run it: B serves an export over TLS and accepts only host-a's
/// certificate; A mirrors a disk into it through an nbd node with <c>tls: true</c>. The node shows
/// TLS and B's identity, keeps them across a restart of A, and the copy is exact.
/// </summary>
public sealed class TlsServiceInteropTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly TestCertificates _certs = new();
    // A's folder outlives each of A's runs (a restart is a new service on the same folder).
    private readonly string _dataA = Directory.CreateTempSubdirectory("blockmirror-interop-a-").FullName;
    private TestIdentity _hostA = null!;
    private ServiceFactory _a = null!;
    private ServiceFactory _b = null!;
    private HttpClient _httpA = null!;
    private HttpClient _httpB = null!;

    public Task InitializeAsync()
    {
        _hostA = _certs.Issue("/O=BlockMirror/CN=host-a");
        var hostB = _certs.Issue("/O=BlockMirror/CN=host-b");
        _b = new ServiceFactory();
        _b.Settings["Nbd:Tls:CertificatePath"] = hostB.CertificatePath;
        _b.Settings["Nbd:Tls:KeyPath"] = hostB.KeyPath;
        _b.Settings["Nbd:Tls:ClientCaPath"] = _certs.Ca.CertificatePath;
        _b.Settings["Nbd:Tls:AllowedClients:0"] = "CN=host-a,O=BlockMirror";
        _a = NewA();
        _httpA = _a.CreateClient();
        _httpB = _b.CreateClient();
        return Task.CompletedTask;
    }

    private ServiceFactory NewA()
    {
        var a = new ServiceFactory(_dataA);
        a.Settings["Nbd:Client:Tls:CaPath"] = _certs.Ca.CertificatePath;
        a.Settings["Nbd:Client:Tls:CertificatePath"] = _hostA.CertificatePath;
        a.Settings["Nbd:Client:Tls:KeyPath"] = _hostA.KeyPath;
        return a;
    }

    public async Task DisposeAsync()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
        _certs.Dispose();
        try
        {
            Directory.Delete(_dataA, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static Task<JsonNode> Send(HttpClient http, HttpMethod method, string url, object? body, HttpStatusCode expected) =>
        ServiceFactory.SendAsync(http, method, url, body, expected);

    [NbdInteropFact]
    public async Task A_mirrors_into_b_over_tls_and_the_node_shows_tls_and_b_identity_across_a_restart()
    {
        await Send(_httpB, HttpMethod.Post, "/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size } }, HttpStatusCode.Created);
        var export = await Send(_httpB, HttpMethod.Post, "/api/v1/exports", new { name = "dst", node = "dst", writable = true }, HttpStatusCode.Created);
        var tlsUri = (string)export["uri"]!;
        Assert.StartsWith("nbds://", tlsUri, StringComparison.Ordinal);

        // A plain node cannot reach B, and says why.
        var plainUri = "nbd" + tlsUri["nbds".Length..];
        var refused = await Send(_httpA, HttpMethod.Post, "/api/v1/nodes", new { name = "plain", driver = "nbd", uri = plainUri }, HttpStatusCode.BadRequest);
        Assert.Equal("nbd-connect-failed", (string?)refused["code"]);
        Assert.Contains("requires TLS", (string?)refused["detail"], StringComparison.Ordinal);
        // tls: false contradicts an nbds URI.
        var contradiction = await Send(_httpA, HttpMethod.Post, "/api/v1/nodes", new { name = "x", driver = "nbd", uri = tlsUri, tls = false }, HttpStatusCode.BadRequest);
        Assert.NotNull(contradiction["errors"]?["tls"]);

        var remote = await Send(_httpA, HttpMethod.Post, "/api/v1/nodes", new { name = "remote", driver = "nbd", uri = plainUri, tls = true }, HttpStatusCode.Created);
        Assert.True((bool)remote["tls"]!);
        Assert.Equal(tlsUri, (string?)remote["uri"]);
        Assert.Contains("CN=host-b", (string?)remote["peerSubject"], StringComparison.Ordinal);

        await Send(_httpA, HttpMethod.Post, "/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } }, HttpStatusCode.Created);
        var data = new byte[3 << 20];
        new Random(16).NextBytes(data);
        using (var content = new ByteArrayContent(data))
        using (var r = await _httpA.PutAsync("/api/v1/nodes/src/data?offset=1M", content))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);

        await Send(_httpA, HttpMethod.Post, "/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "src", target = "remote" }, HttpStatusCode.Created);
        await ServiceFactory.WaitForJobAsync(_httpA, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        await Send(_httpA, HttpMethod.Post, "/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_httpA, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
        Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(_a.ImageRoot, "src.img")), await File.ReadAllBytesAsync(Path.Combine(_b.ImageRoot, "dst.img")));

        // A restarts: the node comes back over TLS, from the stored URI alone.
        await _a.DisposeAsync();
        _a = NewA();
        _httpA = _a.CreateClient();
        var restored = await Send(_httpA, HttpMethod.Get, "/api/v1/nodes/remote", null, HttpStatusCode.OK);
        Assert.True((bool)restored["tls"]!);
        Assert.Equal(tlsUri, (string?)restored["uri"]);
        Assert.Contains("CN=host-b", (string?)restored["peerSubject"], StringComparison.Ordinal);
        var local = await Send(_httpA, HttpMethod.Get, "/api/v1/nodes/src", null, HttpStatusCode.OK);
        Assert.False((bool)local["tls"]!);
        Assert.Null(local["peerSubject"]);
    }
}
