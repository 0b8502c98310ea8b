using System.Net;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// A node with <c>cache: {direct: true}</c> (O_DIRECT) through the service's NBD export, driven by
/// real clients: qemu-io's byte-granular writes at odd offsets (each an unaligned NBD request, a
/// read-modify-write below), write-zeroes and discards, checked against a byte model and the file;
/// fio's nbd engine with verification; and a mirror into a direct target whose last chunk is a
/// single sector.
/// </summary>
public sealed class CacheDirectInteropTests : IAsyncLifetime
{
    private const long Size = (16L << 20) + 512;
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    private Task<System.Text.Json.Nodes.JsonNode> Post(string url, object body, HttpStatusCode expected = HttpStatusCode.Created) =>
        ServiceFactory.SendAsync(_http, HttpMethod.Post, url, body, expected);

    private async Task<string> DirectExportAsync(string name)
    {
        var node = await Post("/api/v1/nodes", new { name, driver = "raw", path = $"{name}.img", create = new { size = Size }, cache = new { direct = true } });
        Assert.True((bool)node["cache"]!["direct"]!);
        var export = await Post("/api/v1/exports", new { name, node = name, writable = true });
        return (string)export["uri"]!;
    }

    [NbdInteropFact("qemu-io", "nbdinfo")]
    public async Task Qemu_io_at_odd_offsets_through_a_direct_export_matches_a_byte_model()
    {
        var uri = await DirectExportAsync("d");
        var model = new byte[Size];
        var commands = new List<string>();
        void Write(byte pattern, long offset, int length)
        {
            commands.Add($"write -P 0x{pattern:x2} {offset} {length}");
            Array.Fill(model, pattern, (int)offset, length);
        }
        void Zero(long offset, int length, bool unmap)
        {
            commands.Add(unmap ? $"write -z -u {offset} {length}" : $"write -z {offset} {length}");
            Array.Clear(model, (int)offset, length);
        }
        Write(0x11, 1, 3);                      // inside one sector
        Write(0x22, 511, 2);                    // across a sector boundary
        Write(0x33, 4095, 8193);                // unaligned head and tail, aligned middle
        Write(0x44, 65536, 65536);              // aligned
        Write(0x55, 65536 + 100, 7);            // into the aligned one
        Write(0x66, Size - 300, 300);           // the image's last, partial sector
        Write(0x77, 1 << 20, 3 << 20);          // large, aligned
        Zero((1 << 20) + 17, 70000, unmap: false);
        Zero((2 << 20) + 4096, 65536, unmap: true);
        Write(0x88, (2 << 20) + 4096 + 1000, 10);
        var args = new List<string> { "-f", "raw", uri };
        foreach (var c in commands)
        {
            args.Add("-c");
            args.Add(c);
        }
        args.AddRange(["-c", "flush"]);
        await InteropTools.RunOkAsync("qemu-io", [.. args]);

        var read = await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-r", uri,
            "-c", "read -P 0x33 4095 8193", "-c", "read -P 0x55 65636 7", "-c", "read -P 0x66 " + (Size - 300) + " 300", "-c", "read -P 0 0 1");
        Assert.DoesNotContain("Pattern verification failed", read.Stdout, StringComparison.Ordinal);
        var info = await InteropTools.RunOkAsync("nbdinfo", "--size", uri);
        Assert.Equal(Size.ToString(System.Globalization.CultureInfo.InvariantCulture), info.Stdout.Trim());

        using var r = await _http.GetAsync($"/api/v1/nodes/d/data?offset=0&length={Size}");
        var served = await r.Content.ReadAsByteArrayAsync();
        Assert.True(served.AsSpan().SequenceEqual(model), $"the export differs from the model at byte {served.AsSpan().CommonPrefixLength(model)}");
        var file = await File.ReadAllBytesAsync(Path.Combine(_factory.ImageRoot, "d.img"));
        Assert.Equal(Size, file.LongLength);
        Assert.True(file.AsSpan().SequenceEqual(model), $"the file differs from the model at byte {file.AsSpan().CommonPrefixLength(model)}");
    }

    [NbdInteropFact("fio")]
    public async Task Fio_random_writes_of_mixed_sizes_through_a_direct_export_verify()
    {
        var uri = await DirectExportAsync("f");
        // Sizes from one sector to 64 KiB at sector offsets, 8 in flight, every block verified after.
        var result = await InteropTools.RunOkAsync("fio", "--name=direct", "--ioengine=nbd", $"--uri={uri}", "--rw=randwrite",
            "--bsrange=512-64k", "--blockalign=512", "--size=8m", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
            "--verify_fatal=1", "--randrepeat=1", "--randseed=7", "--output-format=terse");
        Assert.DoesNotContain("verify", result.Stderr, StringComparison.OrdinalIgnoreCase);
    }

    [NbdInteropFact("qemu-img")]
    public async Task A_mirror_into_a_direct_target_with_a_one_sector_tail_is_byte_identical()
    {
        await Post("/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } });
        var random = new Random(9);
        foreach (var offset in new[] { 0L, 777L, 5L << 20, Size - 512 })
        {
            var data = new byte[Math.Min(300_000, Size - offset)];
            random.NextBytes(data);
            using var content = new ByteArrayContent(data);
            using var put = await _http.PutAsync($"/api/v1/nodes/src/data?offset={offset}", content);
            Assert.Equal(HttpStatusCode.NoContent, put.StatusCode);
        }
        await Post("/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size }, cache = new { direct = true } });
        await Post("/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "src", target = "dst" });
        await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        await Post("/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
        await InteropTools.RunOkAsync("qemu-img", "compare", "-U", "-f", "raw", "-F", "raw",
            Path.Combine(_factory.ImageRoot, "src.img"), Path.Combine(_factory.ImageRoot, "dst.img"));
    }
}
