using System.Collections.Concurrent;
using System.Text.Json;
using BlockMirror.Core;
using BlockMirror.Nbd;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>
/// NBD over TLS with the real tools: qemu-io, qemu-img, nbdinfo and nbdcopy (GnuTLS) against our
/// server, our client against qemu-nbd --tls-creds, and the refusals on both sides. The
/// certificates are made by openssl in a temp directory and laid out as QEMU's tls-creds-x509
/// and libnbd's tls-certificates= read them.
/// </summary>
public sealed class NbdTlsInteropTests : IDisposable
{
    private readonly TestCertificates _certs = new();
    private readonly TestIdentity _server;
    private readonly TestIdentity _client;
    private readonly ConcurrentQueue<string> _refused = new();

    public NbdTlsInteropTests()
    {
        _server = _certs.Issue("/O=BlockMirror/CN=host-a");
        _client = _certs.Issue("/O=BlockMirror/CN=host-b");
    }

    public void Dispose() => _certs.Dispose();

    private Task<NbdTestServer> StartServerAsync(bool requireClient = false, params string[] allowed) =>
        NbdTestServer.StartAsync(diskSize: InteropNbdServer.DiskSize, configure: o =>
        {
            o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath,
                requireClient || allowed.Length > 0 ? _certs.Ca.CertificatePath : null, requireClient, allowed);
        }, refused: _refused.Enqueue);

    private static int PortOf(NbdTestServer server) => ((System.Net.IPEndPoint)server.Server.LocalEndPoint).Port;

    /// <summary>qemu's --object and --image-opts for our server's export over TLS with the credentials in <paramref name="dir"/>.</summary>
    private static string[] QemuTls(NbdTestServer server, string dir, string export = "disk0") =>
    [
        "--object", $"tls-creds-x509,id=tls0,endpoint=client,dir={dir}",
        "--image-opts", $"driver=nbd,host=127.0.0.1,port={PortOf(server)},export={export},tls-creds=tls0",
    ];

    private static string Nbds(NbdTestServer server, string dir, string export = "disk0") =>
        $"nbds://127.0.0.1:{PortOf(server)}/{export}?tls-certificates={dir}";

    [NbdInteropFact("qemu-io", "qemu-img")]
    public async Task Qemu_io_and_qemu_img_write_and_read_our_export_over_tls_with_a_client_certificate()
    {
        await using var server = await StartServerAsync(requireClient: true, "CN=host-b,O=BlockMirror");
        var dir = _certs.QemuDirectory("client", _client);

        await InteropTools.RunOkAsync("qemu-io", [.. QemuTls(server, dir), "-c", "write -P 0x5a 1048576 1048576"]);
        var verify = await InteropTools.RunOkAsync("qemu-io", [.. QemuTls(server, dir), "-c", "read -P 0x5a 1048576 1048576"]);
        Assert.DoesNotContain("verification failed", verify.Stdout, StringComparison.OrdinalIgnoreCase);
        var local = new byte[1048576];
        await server.Disk.ReadAsync(1048576, local);
        Assert.All(local, b => Assert.Equal(0x5a, b));

        // qemu-img reads the whole export back through TLS; it equals our image.
        var copy = Path.Combine(_certs.Directory, "copy.raw");
        await InteropTools.RunOkAsync("qemu-img", ["convert", "-O", "raw", .. QemuTls(server, dir), copy]);
        Assert.Equal(await File.ReadAllBytesAsync(server.ImagePath), await File.ReadAllBytesAsync(copy));
        Assert.Contains(server.Log, l => l.Contains("host-b", StringComparison.Ordinal) && l.Contains("TLS", StringComparison.Ordinal));
    }

    [NbdInteropFact("nbdinfo", "nbdcopy")]
    public async Task Nbdinfo_and_nbdcopy_with_tls_certificates_against_our_server()
    {
        await using var server = await StartServerAsync();
        var dir = _certs.QemuDirectory("client", null);

        var info = await InteropTools.RunOkAsync("nbdinfo", "--json", Nbds(server, dir));
        using (var json = JsonDocument.Parse(info.Stdout))
        {
            Assert.True(json.RootElement.GetProperty("TLS").GetBoolean());
            Assert.Equal(InteropNbdServer.DiskSize, json.RootElement.GetProperty("exports")[0].GetProperty("export-size").GetInt64());
        }

        var source = Path.Combine(_certs.Directory, "source.raw");
        var data = new byte[InteropNbdServer.DiskSize];
        new Random(16).NextBytes(data.AsSpan(0, 5 * 1024 * 1024));
        await File.WriteAllBytesAsync(source, data);
        await InteropTools.RunOkAsync("nbdcopy", source, Nbds(server, dir));
        var back = Path.Combine(_certs.Directory, "back.raw");
        await InteropTools.RunOkAsync("nbdcopy", Nbds(server, dir), back);
        Assert.Equal(data, await File.ReadAllBytesAsync(back));
        Assert.Equal(data, await File.ReadAllBytesAsync(server.ImagePath));
    }

    [NbdInteropFact("qemu-io", "nbdinfo")]
    public async Task Plain_qemu_io_and_nbdinfo_are_refused_and_the_refusal_is_logged_with_the_peer()
    {
        await using var server = await StartServerAsync();
        var plain = await InteropTools.RunAsync("qemu-io", ["-f", "raw", "-c", "read 0 512", $"nbd://127.0.0.1:{PortOf(server)}/disk0"]);
        Assert.NotEqual(0, plain.ExitCode);
        Assert.Contains("TLS", plain.Stderr + plain.Stdout, StringComparison.Ordinal);

        var info = await InteropTools.RunAsync("nbdinfo", [$"nbd://127.0.0.1:{PortOf(server)}/disk0"]);
        Assert.NotEqual(0, info.ExitCode);
        Assert.Contains(_refused, l => l.Contains("127.0.0.1:", StringComparison.Ordinal) && l.Contains("TLS is required", StringComparison.Ordinal));
    }

    [NbdInteropFact("nbdinfo")]
    public async Task Nbdinfo_trusting_another_ca_refuses_our_server_and_we_log_the_failed_handshake()
    {
        await using var server = await StartServerAsync();
        var dir = _certs.QemuDirectory("client", null, _certs.NewCa("Another CA"));
        var info = await InteropTools.RunAsync("nbdinfo", [Nbds(server, dir)]);
        Assert.NotEqual(0, info.ExitCode);
        Assert.Contains("certificate", info.Stderr, StringComparison.OrdinalIgnoreCase);
        await WaitForAsync(() => _refused.Any(l => l.Contains("TLS handshake failed", StringComparison.Ordinal)));
        Assert.Contains(_refused, l => l.Contains("127.0.0.1:", StringComparison.Ordinal));
    }

    [NbdInteropFact("qemu-io")]
    public async Task Qemu_io_with_an_unknown_identity_or_an_expired_certificate_is_refused_saying_why()
    {
        await using var server = await StartServerAsync(requireClient: true, "CN=host-b,O=BlockMirror");
        var stranger = _certs.QemuDirectory("client", _certs.Issue("/O=BlockMirror/CN=host-c"));
        var refused = await InteropTools.RunAsync("qemu-io", [.. QemuTls(server, stranger), "-c", "read 0 512"]);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("not authorized", refused.Stderr + refused.Stdout, StringComparison.Ordinal);
        Assert.Contains(_refused, l => l.Contains("host-c", StringComparison.Ordinal) && l.Contains("not authorized", StringComparison.Ordinal));

        var expired = _certs.QemuDirectory("client", _certs.Issue("/O=BlockMirror/CN=host-b", expired: true));
        var old = await InteropTools.RunAsync("qemu-io", [.. QemuTls(server, expired), "-c", "read 0 512"]);
        Assert.NotEqual(0, old.ExitCode);
        // QEMU checks its own certificate's dates when it loads it; our server would say "expired" too.
        Assert.Contains("expired", (old.Stderr + old.Stdout).ToLowerInvariant(), StringComparison.Ordinal);
    }

    [NbdInteropFact("qemu-nbd")]
    public async Task Our_client_reads_and_writes_qemu_nbd_over_tls_and_names_its_peer()
    {
        var image = Path.Combine(_certs.Directory, "q.img");
        await using (var f = new FileStream(image, FileMode.CreateNew))
            f.SetLength(16L * 1024 * 1024);
        var socket = Path.Combine(_certs.Directory, "q.sock");
        var dir = _certs.QemuDirectory("server", _server);
        // verify-peer is QEMU's default for a server: a client certificate from the CA is required.
        await using var qemu = await BackgroundTool.StartAsync("qemu-nbd", socket, "-f", "raw", "-t", "-x", "exp", $"--socket={socket}",
            "--object", $"tls-creds-x509,id=tls0,endpoint=server,dir={dir}", "--tls-creds", "tls0", image);
        var uri = $"nbds+unix:///exp?socket={socket}";

        await using (var nbd = await NbdImage.OpenAsync(uri, readOnly: false, new NbdClientOptions { Tls = NbdClientTls.Load(_certs.Ca.CertificatePath, _client.CertificatePath, _client.KeyPath) }))
        {
            Assert.True(nbd.Client.Tls);
            Assert.Contains("CN=host-a", nbd.Client.PeerSubject, StringComparison.Ordinal);
            var data = new byte[3 * 1024 * 1024];
            new Random(7).NextBytes(data);
            await nbd.WriteAsync(65536, data);
            await nbd.FlushAsync();
            var back = new byte[data.Length];
            await nbd.ReadAsync(65536, back);
            Assert.Equal(data, back);
        }

        // Without a client certificate qemu-nbd ends the session; our message says what to look at.
        var noCertificate = await Assert.ThrowsAsync<BlockException>(() => NbdImage.OpenAsync(uri, false, new NbdClientOptions { Tls = NbdClientTls.Load(_certs.Ca.CertificatePath, null, null) }));
        Assert.Equal("nbd-connect-failed", noCertificate.Code);
        Assert.Contains("may not accept this host's certificate", noCertificate.Message, StringComparison.Ordinal);

        // A CA that did not sign qemu-nbd's certificate: we refuse it, naming it.
        var wrongCa = _certs.NewCa("Another CA");
        var untrusted = await Assert.ThrowsAsync<BlockException>(() => NbdImage.OpenAsync(uri, false, new NbdClientOptions { Tls = NbdClientTls.Load(wrongCa.CertificatePath, _client.CertificatePath, _client.KeyPath) }));
        Assert.Contains("not signed by a trusted CA", untrusted.Message, StringComparison.Ordinal);
        Assert.Contains("host-a", untrusted.Message, StringComparison.Ordinal);

        // Plain to a TLS qemu-nbd: refused as TLS required.
        var plain = await Assert.ThrowsAsync<BlockException>(() => NbdImage.OpenAsync($"nbd+unix:///exp?socket={socket}", false));
        Assert.Contains("requires TLS", plain.Message, StringComparison.Ordinal);
    }

    [NbdInteropFact("nbdkit")]
    public async Task Our_client_refuses_nbdkit_serving_an_expired_certificate()
    {
        // nbdkit (unlike QEMU and our server) serves a certificate whatever its dates.
        var dir = _certs.QemuDirectory("server", _certs.Issue("/O=BlockMirror/CN=old-server", expired: true));
        var socket = Path.Combine(_certs.Directory, "k.sock");
        await using var nbdkit = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "--tls=require", $"--tls-certificates={dir}", "memory", "1M");
        var e = await Assert.ThrowsAsync<BlockException>(() => NbdImage.OpenAsync($"nbds+unix:///?socket={socket}", false,
            new NbdClientOptions { Tls = NbdClientTls.Load(_certs.Ca.CertificatePath, null, null) }));
        Assert.Equal("nbd-connect-failed", e.Code);
        Assert.Contains("expired", e.Message, StringComparison.Ordinal);
        Assert.Contains("old-server", e.Message, StringComparison.Ordinal);
    }

    [NbdInteropFact("nbdinfo")]
    public async Task Nbdinfo_presenting_an_expired_client_certificate_is_refused_saying_so()
    {
        await using var server = await StartServerAsync(requireClient: true);
        var dir = _certs.QemuDirectory("client", _certs.Issue("/O=BlockMirror/CN=old-client", expired: true));
        var info = await InteropTools.RunAsync("nbdinfo", [Nbds(server, dir)]);
        Assert.NotEqual(0, info.ExitCode);
        Assert.Contains(_refused, l => l.Contains("127.0.0.1:", StringComparison.Ordinal) && l.Contains("old-client", StringComparison.Ordinal) && l.Contains("expired", StringComparison.Ordinal));
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in 10 s");
            await Task.Delay(10);
        }
    }
}
