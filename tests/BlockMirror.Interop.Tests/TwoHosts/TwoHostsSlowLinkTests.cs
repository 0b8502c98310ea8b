using System.Net;
using System.Text.Json.Nodes;
using Xunit.Abstractions;
using static BlockMirror.Interop.Tests.TwoHosts.HostApi;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// Issue 16 item 2, second half: the two hosts of <see cref="TwoHostsTlsTests"/> over a slow link
/// (<see cref="SlowLink"/>), and B's service killed with kill -9 while A mirrors into it through a
/// working bitmap and a writer writes on A. The job fails with an error that names the target, the
/// working bitmap keeps every byte the target lacks, and once B is back a second mirror from that
/// bitmap copies only what it holds, leaving the target equal to the source.
/// </summary>
[Collection(TwoHostsCollection.Name)]
public sealed class TwoHostsSlowLinkTests(ITestOutputHelper output)
{
    private const long Size = 128L << 20;
    private const long DataOffset = 8L << 20;
    private const int DataLength = 32 << 20;

    // The writer's region: hot, so the bitmap stays far smaller than the image (the point of resuming from it).
    private const long WriterOffset = 64L << 20;
    private const long WriterLength = 4L << 20;

    [NetnsFact]
    public async Task When_b_is_killed_mid_mirror_over_a_slow_link_the_working_bitmap_keeps_what_b_lacks_and_a_second_mirror_copies_only_that()
    {
        using var certs = new TestCertificates();
        var hostA = certs.Issue("/O=BlockMirror/CN=host-a", null, false, NetworkNamespaces.AddressA);
        var hostB = certs.Issue("/O=BlockMirror/CN=host-b", null, false, NetworkNamespaces.AddressB);
        using var net = new NetworkNamespaces();
        var link = SlowLink.Shape(net);
        output.WriteLine($"link: {link.Description}");
        var root = Directory.CreateTempSubdirectory("bm-slow-link-").FullName;
        try
        {
            var b = await NamespacedService.StartAsync(net.B, Path.Combine(root, "b"),
                "--Nbd:Listen", $"{NetworkNamespaces.AddressB}:10809",
                "--Nbd:Tls:CertificatePath", hostB.CertificatePath, "--Nbd:Tls:KeyPath", hostB.KeyPath,
                "--Nbd:Tls:ClientCaPath", certs.Ca.CertificatePath, "--Nbd:Tls:AllowedClients:0", "CN=host-a,O=BlockMirror");
            try
            {
                await using var a = await NamespacedService.StartAsync(net.A, Path.Combine(root, "a"),
                    "--Nbd:Listen", "",
                    "--Nbd:Client:Tls:CaPath", certs.Ca.CertificatePath,
                    "--Nbd:Client:Tls:CertificatePath", hostA.CertificatePath, "--Nbd:Client:Tls:KeyPath", hostA.KeyPath);

                await SendAsync(b.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size } }, HttpStatusCode.Created);
                var uri = (string)(await ExportAsync(b))["uri"]!;

                // b0 records from the moment the (empty) disk exists, so its dirty granules are
                // exactly where the disk differs from B's empty target: the first mirror's work.
                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } }, HttpStatusCode.Created);
                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes/src/bitmaps", new { name = "b0" }, HttpStatusCode.Created);
                var data = new byte[DataLength];
                new Random(16).NextBytes(data);
                await PutAsync(a.Http, "src", DataOffset, data);
                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "remote", driver = "nbd", uri, tls = true }, HttpStatusCode.Created);

                using var stop = new CancellationTokenSource();
                var writes = 0;
                var writer = Task.Run(async () =>
                {
                    var rng = new Random(17);
                    var piece = new byte[64 << 10];
                    while (!stop.IsCancellationRequested)
                    {
                        rng.NextBytes(piece);
                        await PutAsync(a.Http, "src", WriterOffset + (rng.NextInt64(0, (WriterLength - piece.Length) / 512) * 512), piece);
                        Interlocked.Increment(ref writes);
                    }
                });

                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/mirror",
                    new { id = "move", sync = "full", device = "src", target = "remote", bitmap = "b0", bitmapMode = "always", onTargetError = "report" },
                    HttpStatusCode.Created);
                // In the middle: a good part of the data is on B, and the job is still copying.
                var middle = await WaitForJobAsync(a, "move", j => (long)j["bytesCopied"]! >= DataLength / 2 || (string?)j["status"] == "concluded");
                Assert.Equal("running", (string?)middle["status"]);
                await b.KillAsync();

                // onTargetError report: the job fails, and its error says which target went away.
                var failed = await WaitForJobAsync(a, "move", j => (string?)j["status"] == "concluded");
                output.WriteLine($"failed job: {failed.ToJsonString()}");
                Assert.Equal("failed", (string?)failed["outcome"]);
                Assert.Contains(uri, (string?)failed["error"]);
                await stop.CancelAsync();
                await writer;
                Assert.True(writes > 0, "the writer got no write in");

                // Every byte where B's target (as the kill left it) differs from the source lies in a
                // granule b0 holds dirty; b0 records again, so the writer's last writes are in it too.
                var bitmap = await SendAsync(a.Http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/b0", null, HttpStatusCode.OK);
                Assert.True((bool)bitmap["recording"]!);
                var dirty = (await SendAsync(a.Http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/b0/extents", null, HttpStatusCode.OK))["items"]!.AsArray()
                    .Select(e => ((long)e!["offset"]!, (long)e["length"]!)).ToList();
                var dirtyBytes = (long)bitmap["count"]!;
                Assert.Equal(dirtyBytes, dirty.Sum(e => e.Item2));
                var source = await File.ReadAllBytesAsync(Path.Combine(a.ImageRoot, "src.img"));
                var stale = await File.ReadAllBytesAsync(Path.Combine(b.ImageRoot, "dst.img"));
                var differing = FirstByteOutside(source, stale, dirty);
                Assert.True(differing < 0, $"byte {differing} differs on B but b0 holds it clean");
                Assert.True(dirtyBytes > 0, "the kill left nothing to copy: it came too late to test anything");
                Assert.True(dirtyBytes < Size / 4, $"b0 holds {dirtyBytes} of {Size} bytes: the first mirror got nothing through");
                output.WriteLine($"b0 after the kill: {dirtyBytes} dirty bytes in {dirty.Count} extents; first job copied {failed["bytesCopied"]}");

                // B comes back on its database and root; exports are not stored, so it exports again.
                b = await b.RestartAsync();
                Assert.Equal(uri, (string?)(await ExportAsync(b))["uri"]);
                // A's node stays failed after its connection broke (only an abandoned one reconnects):
                // the operator opens it again, which is the same TLS handshake to the same export.
                await SendAsync(a.Http, HttpMethod.Delete, "/api/v1/nodes/remote", null, HttpStatusCode.NoContent);
                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/nodes", new { name = "remote", driver = "nbd", uri, tls = true }, HttpStatusCode.Created);

                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/mirror",
                    new { id = "resume", sync = "full", device = "src", target = "remote", bitmap = "b0", bitmapMode = "always", onTargetError = "report" },
                    HttpStatusCode.Created);
                var ready = await WaitForJobAsync(a, "resume", j => (string?)j["status"] is "ready" or "concluded");
                Assert.Equal("ready", (string?)ready["status"]);
                await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/resume/complete", new { }, HttpStatusCode.OK);
                var done = await WaitForJobAsync(a, "resume", j => (string?)j["status"] == "concluded");
                Assert.Null(done["error"]);
                var copied = (long)done["bytesCopied"]!;
                output.WriteLine($"second job copied {copied} bytes");
                Assert.True(copied <= dirtyBytes, $"the second mirror copied {copied} bytes, more than the {dirtyBytes} b0 held");

                var target = await File.ReadAllBytesAsync(Path.Combine(b.ImageRoot, "dst.img"));
                Assert.Equal(Size, target.LongLength);
                Assert.True(source.AsSpan().SequenceEqual(target), "the target on B differs from the source on A");
            }
            finally
            {
                await b.DisposeAsync();
            }
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

    private static Task<JsonNode> ExportAsync(NamespacedService b) =>
        SendAsync(b.Http, HttpMethod.Post, "/api/v1/exports", new { name = "dst", node = "dst", writable = true }, HttpStatusCode.Created);

    /// <summary>The first offset where the two images differ outside every dirty extent, or -1.</summary>
    private static long FirstByteOutside(byte[] source, byte[] target, List<(long Offset, long Length)> dirty)
    {
        long position = 0;
        foreach (var (offset, length) in dirty.Append((source.LongLength, 0L)))
        {
            var clean = (int)(offset - position);
            var at = source.AsSpan((int)position, clean).CommonPrefixLength(target.AsSpan((int)position, clean));
            if (at < clean)
                return position + at;
            position = offset + length;
        }
        return -1;
    }
}
