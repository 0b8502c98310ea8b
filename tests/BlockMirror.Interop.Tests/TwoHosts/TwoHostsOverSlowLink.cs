using System.Net;
using Xunit.Abstractions;
using static BlockMirror.Interop.Tests.TwoHosts.HostApi;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// The scene of <see cref="TwoHostsSlowLinkTests"/>: two namespaces over a <see cref="SlowLink"/>,
/// host B exporting an empty target <c>dst</c> over TLS, host A with a disk <c>src</c> whose bitmap
/// <c>b0</c> has recorded every write since the disk was created (so b0's dirty granules are exactly
/// where it differs from B's empty target), <see cref="DataLength"/> bytes of random data written,
/// and B's export opened as the node <c>remote</c>.
/// </summary>
internal sealed class TwoHostsOverSlowLink : IAsyncDisposable
{
    public const long Size = 128L << 20;
    public const long DataOffset = 8L << 20;
    public const int DataLength = 32 << 20;

    private readonly TestCertificates _certs;
    private readonly NetworkNamespaces _net;
    private readonly string _root;

    private TwoHostsOverSlowLink(TestCertificates certs, NetworkNamespaces net, string root)
    {
        _certs = certs;
        _net = net;
        _root = root;
    }

    public NamespacedService A { get; private set; } = null!;

    public NamespacedService B { get; private set; } = null!;

    /// <summary>B's export, as A's node reaches it.</summary>
    public string Uri { get; private set; } = "";

    public static async Task<TwoHostsOverSlowLink> StartAsync(ITestOutputHelper output)
    {
        var certs = new TestCertificates();
        var hostA = certs.Issue("/O=BlockMirror/CN=host-a", null, false, NetworkNamespaces.AddressA);
        var hostB = certs.Issue("/O=BlockMirror/CN=host-b", null, false, NetworkNamespaces.AddressB);
        var net = new NetworkNamespaces();
        var hosts = new TwoHostsOverSlowLink(certs, net, Directory.CreateTempSubdirectory("bm-slow-link-").FullName);
        try
        {
            output.WriteLine($"link: {SlowLink.Shape(net).Description}");
            hosts.B = await NamespacedService.StartAsync(net.B, Path.Combine(hosts._root, "b"),
                "--Nbd:Listen", $"{NetworkNamespaces.AddressB}:10809",
                "--Nbd:Tls:CertificatePath", hostB.CertificatePath, "--Nbd:Tls:KeyPath", hostB.KeyPath,
                "--Nbd:Tls:ClientCaPath", certs.Ca.CertificatePath, "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=BlockMirror");
            hosts.A = await NamespacedService.StartAsync(net.A, Path.Combine(hosts._root, "a"),
                "--Nbd:Listen", "",
                "--Nbd:Client:Tls:CaPath", certs.Ca.CertificatePath,
                "--Nbd:Client:Tls:CertificatePath", hostA.CertificatePath, "--Nbd:Client:Tls:KeyPath", hostA.KeyPath);
            var a = hosts.A;

            await SendAsync(hosts.B.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size } }, HttpStatusCode.Created);
            hosts.Uri = await hosts.ExportAsync();

            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } }, HttpStatusCode.Created);
            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes/src/bitmaps", new { name = "b0" }, HttpStatusCode.Created);
            var data = new byte[DataLength];
            new Random(16).NextBytes(data);
            await PutAsync(a.Http, "src", DataOffset, data);
            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "remote", driver = "nbd", uri = hosts.Uri, tls = true }, HttpStatusCode.Created);
            return hosts;
        }
        catch
        {
            await hosts.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// B after a kill -9, started again on its database and root: it serves its export again by
    /// itself (exports are stored), at the same URI, before anyone asks; re-creating it is refused.
    /// </summary>
    public async Task RestartBAsync()
    {
        B = await B.RestartAsync();
        var export = await SendAsync(B.Http, HttpMethod.Get, "/api/v1/exports/dst", null, HttpStatusCode.OK);
        Assert.True((bool)export["served"]!, export.ToJsonString());
        Assert.Equal(Uri, (string)export["uri"]!);
        Assert.True((bool)export["writable"]!);
        var again = await SendAsync(B.Http, HttpMethod.Post, "/api/v1/exports", new { name = "dst", node = "dst", writable = true }, HttpStatusCode.Conflict);
        Assert.Equal("export-exists", (string?)again["code"]);
    }

    /// <summary>B's target, read from its file, equals <paramref name="source"/> byte for byte.</summary>
    public async Task AssertTargetEqualsAsync(byte[] source)
    {
        var target = await File.ReadAllBytesAsync(Path.Combine(B.ImageRoot, "dst.img"));
        Assert.Equal(Size, target.LongLength);
        Assert.True(source.AsSpan().SequenceEqual(target), "the target on B differs from the source on A");
    }

    private async Task<string> ExportAsync() =>
        (string)(await SendAsync(B.Http, HttpMethod.Post, "/api/v1/exports", new { name = "dst", node = "dst", writable = true }, HttpStatusCode.Created))["uri"]!;

    public async ValueTask DisposeAsync()
    {
        if (A is not null)
            await A.DisposeAsync();
        if (B is not null)
            await B.DisposeAsync();
        _net.Dispose();
        _certs.Dispose();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
