using System.Net;
using static BlockMirror.Interop.Tests.TwoHosts.HostApi;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// Issue 16 item 2: two hosts on one machine, each a network namespace with its own BlockMirror
/// (own database and image root), joined by a veth pair; NBD between them over TLS with client
/// certificates. B exports an empty target, A mirrors a disk into it while a writer keeps writing
/// on A, A completes, and the target on B equals the source byte for byte.
/// </summary>
[Collection(TwoHostsCollection.Name)]
public sealed class TwoHostsTlsTests
{
    private const long Size = 64L << 20;

    [NetnsFact]
    public async Task A_disk_moves_from_a_to_b_over_tls_between_network_namespaces_while_a_writer_writes()
    {
        using var certs = new TestCertificates();
        var hostA = certs.Issue("/O=BlockMirror/CN=host-a", null, false, NetworkNamespaces.AddressA);
        var hostB = certs.Issue("/O=BlockMirror/CN=host-b", null, false, NetworkNamespaces.AddressB);
        using var net = new NetworkNamespaces();
        var root = Directory.CreateTempSubdirectory("bm-two-hosts-").FullName;
        try
        {
            await using var b = await NamespacedService.StartAsync(net.B, Path.Combine(root, "b"),
                "--Nbd:Listen", $"{NetworkNamespaces.AddressB}:10809",
                "--Nbd:Tls:CertificatePath", hostB.CertificatePath, "--Nbd:Tls:KeyPath", hostB.KeyPath,
                "--Nbd:Tls:ClientCaPath", certs.Ca.CertificatePath, "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=BlockMirror");
            await using var a = await NamespacedService.StartAsync(net.A, Path.Combine(root, "a"),
                "--Nbd:Listen", "",
                "--Nbd:Client:Tls:CaPath", certs.Ca.CertificatePath,
                "--Nbd:Client:Tls:CertificatePath", hostA.CertificatePath, "--Nbd:Client:Tls:KeyPath", hostA.KeyPath);

            await SendAsync(b.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size } }, HttpStatusCode.Created);
            var export = await SendAsync(b.Http, HttpMethod.Post, "/api/v1/exports", new { name = "dst", node = "dst", writable = true }, HttpStatusCode.Created);
            var uri = (string)export["uri"]!;
            Assert.Equal($"nbds://{NetworkNamespaces.AddressB}:10809/dst", uri);

            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } }, HttpStatusCode.Created);
            var random = new Random(16);
            var initial = new byte[24 << 20];
            random.NextBytes(initial);
            await PutAsync(a.Http, "src", 8 << 20, initial);
            var remote = await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "remote", driver = "nbd", uri, tls = true }, HttpStatusCode.Created);
            Assert.True((bool)remote["tls"]!);
            Assert.Equal("CN=host-b, O=BlockMirror", (string?)remote["peerSubject"]);

            // The writer keeps writing on A through the whole copy; it stops only before the completion.
            using var stop = new CancellationTokenSource();
            var writes = 0;
            var writer = Task.Run(async () =>
            {
                var rng = new Random(17);
                var piece = new byte[64 << 10];
                while (!stop.IsCancellationRequested)
                {
                    rng.NextBytes(piece);
                    await PutAsync(a.Http, "src", rng.NextInt64(0, (Size - piece.Length) / 512) * 512, piece);
                    Interlocked.Increment(ref writes);
                }
            });

            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/mirror", new { id = "move", sync = "full", device = "src", target = "remote" }, HttpStatusCode.Created);
            await WaitForJobAsync(a, "move", j => (string?)j["status"] == "ready");
            var atReady = Volatile.Read(ref writes);
            // Writes after READY are mirrored as they happen (the writer must have got some in).
            while (Volatile.Read(ref writes) < atReady + 20)
                await Task.Delay(10);
            await stop.CancelAsync();
            await writer;
            Assert.True(writes > 20, $"only {writes} writes");

            await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/move/complete", new { }, HttpStatusCode.OK);
            var done = await WaitForJobAsync(a, "move", j => (string?)j["status"] == "concluded");
            Assert.Null(done["error"]);

            var source = await File.ReadAllBytesAsync(Path.Combine(a.ImageRoot, "src.img"));
            var target = await File.ReadAllBytesAsync(Path.Combine(b.ImageRoot, "dst.img"));
            Assert.Equal(Size, target.LongLength);
            Assert.True(source.AsSpan().SequenceEqual(target), "the target on B differs from the source on A");
            // A's device now is B's export, over TLS.
            var device = await SendAsync(a.Http, HttpMethod.Get, "/api/v1/nodes/src", null, HttpStatusCode.OK);
            Assert.Equal("nbd", (string?)device["driver"]);
            Assert.True((bool)device["tls"]!);
        }
        finally
        {
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
