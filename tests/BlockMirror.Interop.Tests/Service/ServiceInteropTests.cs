using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>Real QEMU / libnbd / nbdkit tools against the running service (REST + its NBD server).</summary>
public sealed class ServiceInteropTests : IAsyncLifetime
{
    private const long Size = 32L << 20;
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    private Task Post(string url, object body, HttpStatusCode expected = HttpStatusCode.Created) =>
        ServiceFactory.SendAsync(_http, HttpMethod.Post, url, body, expected);

    private async Task<string> SourceWithDataAsync()
    {
        await Post("/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } });
        var random = new Random(5);
        for (var i = 0; i < 8; i++)
        {
            var data = new byte[random.Next(1, 1 << 20)];
            random.NextBytes(data);
            using var content = new ByteArrayContent(data);
            using var r = await _http.PutAsync($"/api/v1/nodes/src/data?offset={random.NextInt64(0, Size - data.Length)}", content);
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        }
        return Path.Combine(_factory.ImageRoot, "src.img");
    }

    private async Task MirrorAndSoftCancelAsync(string target)
    {
        await Post("/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "src", target });
        await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        await Post("/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
    }

    /// <summary>
    /// Mirror src to <paramref name="target"/> with on-target-error enospc: waits until the job is
    /// stopped (status paused, io-status nospace; returns that snapshot), frees space, resumes, and
    /// soft-cancels at ready with no error. It waits for the status, not just the io-status: like
    /// QEMU's mirror_pause, the job enters paused only once the writes already in flight have
    /// answered, and a resume before that races them — their ENOSPC stops the job again.
    /// </summary>
    private async Task<JsonNode> MirrorStopsOnNoSpaceThenCompletesAsync(string target, Func<Task> freeSpace)
    {
        await Post("/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "src", target, onTargetError = "enospc" });
        var stopped = await ServiceFactory.WaitForJobAsync(_http, "m",
            j => (string?)j["status"] == "paused" && (string?)j["ioStatus"] == "nospace", TimeSpan.FromSeconds(60));
        Assert.Null(stopped["error"]);
        await freeSpace();
        // Resume retries what failed; the job converges.
        await Post("/api/v1/jobs/m/resume", new { }, HttpStatusCode.OK);
        var ready = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        Assert.Equal("ok", (string?)ready["ioStatus"]);
        await Post("/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
        return stopped;
    }

    [NbdInteropFact("qemu-nbd", "qemu-img")]
    public async Task Mirror_into_a_qemu_nbd_served_file_is_byte_identical()
    {
        var source = await SourceWithDataAsync();
        var file = Path.Combine(_factory.DataDir, "remote.img");
        await using (var f = new FileStream(file, FileMode.CreateNew))
            f.SetLength(Size);
        var socket = Path.Combine(_factory.DataDir, "q.sock");
        await using (var server = await BackgroundTool.StartAsync("qemu-nbd", socket, "-f", "raw", "-t", "-e", "4", "-x", "exp", $"--socket={socket}", file))
        {
            await Post("/api/v1/nodes", new { name = "remote", driver = "nbd", uri = $"nbd+unix:///exp?socket={socket}" });
            await MirrorAndSoftCancelAsync("remote");
            using (var r = await _http.DeleteAsync("/api/v1/nodes/remote"))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        }
        Assert.Equal(await File.ReadAllBytesAsync(source), await File.ReadAllBytesAsync(file));
        await InteropTools.RunOkAsync("qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", source, file);
    }

    [NbdInteropFact("nbdkit")]
    public async Task Mirror_into_an_nbdkit_memory_export_is_byte_identical()
    {
        var source = await SourceWithDataAsync();
        var socket = Path.Combine(_factory.DataDir, "k.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "memory", $"{Size}");
        await Post("/api/v1/nodes", new { name = "mem", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" });
        await MirrorAndSoftCancelAsync("mem");
        using var r = await _http.GetAsync($"/api/v1/nodes/mem/data?offset=0&length={Size}");
        Assert.Equal(await File.ReadAllBytesAsync(source), await r.Content.ReadAsByteArrayAsync());
    }

    [TmpfsFact]
    public async Task A_target_on_a_full_file_system_stops_the_job_with_nospace_until_the_file_system_grows()
    {
        var source = await SourceWithDataAsync();
        // A real file system that runs out: a 1 MiB tmpfs under the image root holds a sparse 32 MiB
        // target, the source has about 4 MiB of data.
        var small = Path.Combine(_factory.ImageRoot, "small");
        Directory.CreateDirectory(small);
        await InteropTools.RunOkAsync("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small);
        try
        {
            await Post("/api/v1/nodes", new { name = "dst", driver = "raw", path = "small/dst.img", create = new { size = Size } });
            // Space is freed by growing the file system.
            var stopped = await MirrorStopsOnNoSpaceThenCompletesAsync("dst",
                () => InteropTools.RunOkAsync("mount", "-o", "remount,size=64m", small));
            Assert.True((long)stopped["remaining"]! > 0);
            using (var r = await _http.DeleteAsync("/api/v1/nodes/dst"))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
            Assert.Equal(await File.ReadAllBytesAsync(source), await File.ReadAllBytesAsync(Path.Combine(small, "dst.img")));
        }
        finally
        {
            // Lazy: the service may still hold the file open if an assertion failed.
            await InteropTools.RunAsync("umount", ["-l", small]);
        }
    }

    [NbdInteropFact("nbdkit")]
    public async Task Enospc_on_an_nbdkit_target_stops_the_job_until_space_is_freed()
    {
        var source = await SourceWithDataAsync();
        var socket = Path.Combine(_factory.DataDir, "full.sock");
        var inject = Path.Combine(_factory.DataDir, "no-space");
        await File.WriteAllTextAsync(inject, "");
        // nbdkit's error filter answers every write and zero with ENOSPC while the inject file exists.
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "--filter=error", "memory", $"{Size}",
            "error=ENOSPC", "error-pwrite-rate=100%", "error-zero-rate=100%", $"error-file={inject}");
        await Post("/api/v1/nodes", new { name = "full", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" });
        // Space is freed by removing the inject file.
        var stopped = await MirrorStopsOnNoSpaceThenCompletesAsync("full", () =>
        {
            File.Delete(inject);
            return Task.CompletedTask;
        });
        Assert.True((bool)stopped["paused"]!);
        using var r = await _http.GetAsync($"/api/v1/nodes/full/data?offset=0&length={Size}");
        Assert.Equal(await File.ReadAllBytesAsync(source), await r.Content.ReadAsByteArrayAsync());
    }

    [NbdInteropFact("nbdkit")]
    public async Task Eio_on_an_nbdkit_target_fails_a_report_job_and_keeps_the_work_in_its_bitmap()
    {
        await SourceWithDataAsync();
        await Post("/api/v1/nodes/src/bitmaps", new { name = "work", granularity = 65536 });
        using (var content = new ByteArrayContent(new byte[3 << 20]))
        using (var w = await _http.PutAsync("/api/v1/nodes/src/data?offset=0", content))
            Assert.Equal(HttpStatusCode.NoContent, w.StatusCode);
        var socket = Path.Combine(_factory.DataDir, "eio.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "--filter=error", "memory", $"{Size}",
            "error=EIO", "error-pwrite-rate=100%", "error-zero-rate=100%");
        await Post("/api/v1/nodes", new { name = "bad", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" });
        var before = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/work", null, HttpStatusCode.OK);
        await Post("/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "src", target = "bad", bitmap = "work", autoDismiss = false });
        var failed = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.False(string.IsNullOrEmpty((string?)failed["error"]));
        // Nothing reached the target, so the working bitmap still holds every granule it had.
        var after = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/work", null, HttpStatusCode.OK);
        Assert.Equal((long)before["count"]!, (long)after["count"]!);
        Assert.False((bool)after["busy"]!);
        Assert.True((bool)after["recording"]!);
    }

    [NbdInteropFact("qemu-io", "nbdinfo")]
    public async Task Qemu_io_through_the_service_export_dirties_exactly_what_it_wrote()
    {
        await Post("/api/v1/nodes", new { name = "disk", driver = "raw", path = "disk.img", create = new { size = Size } });
        await Post("/api/v1/nodes/disk/bitmaps", new { name = "b0", granularity = 65536 });
        var export = await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/exports", new { name = "disk", node = "disk", bitmaps = new[] { "b0" } }, HttpStatusCode.Created);
        var uri = (string)export["uri"]!;
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", uri, "-c", "write -P 0x55 100000 4096", "-c", "write -P 0x66 20971520 65536");
        var extents = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/disk/bitmaps/b0/extents", null, HttpStatusCode.OK);
        var items = extents["items"]!.AsArray().Select(e => ((long)e!["offset"]!, (long)e["length"]!)).ToList();
        Assert.Equal([(65536L, 65536L), (20971520L, 65536L)], items);
        var map = await InteropTools.RunOkAsync("nbdinfo", "--map=qemu:dirty-bitmap:b0", uri);
        Assert.Contains("dirty", map.Stdout, StringComparison.Ordinal);
        var read = await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-r", uri, "-c", "read -P 0x55 100000 4096");
        Assert.DoesNotContain("Pattern verification failed", read.Stdout, StringComparison.Ordinal);
    }

    [NbdInteropFact("qemu-io")]
    public async Task A_client_killed_mid_write_leaves_the_service_healthy()
    {
        await Post("/api/v1/nodes", new { name = "disk", driver = "raw", path = "disk.img", create = new { size = 512L << 20 } });
        await Post("/api/v1/nodes/disk/bitmaps", new { name = "b0" });
        var export = await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/exports", new { name = "disk", node = "disk" }, HttpStatusCode.Created);
        var uri = (string)export["uri"]!;
        // Many 1 MiB writes; the client is killed once the service has seen the first of them.
        var psi = new ProcessStartInfo(InteropTools.Require("qemu-io"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { "-f", "raw", uri, "-c", "aio_write -P 0x11 0 256M", "-c", "aio_flush" })
            psi.ArgumentList.Add(a);
        using (var client = await ToolLauncher.StartAsync(psi))
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (true)
            {
                var b0 = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/disk/bitmaps/b0", null, HttpStatusCode.OK);
                if ((long)b0["count"]! > 0 || client.HasExited || DateTime.UtcNow > deadline)
                    break;
                await Task.Yield();
            }
            if (!client.HasExited)
                client.Kill(entireProcessTree: true);
            await client.WaitForExitAsync();
        }
        using (var health = await _http.GetAsync("/healthz"))
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        // The export still serves new clients.
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", uri, "-c", "write -P 0x22 0 4096", "-c", "read -P 0x22 0 4096");
    }
}
