using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Issue 11.4 over HTTP: a bitmap on a mirror's target records every write the job makes (QEMU:
/// with sync full it is fully dirty at once, with sync none it records each copied write), in both
/// copy modes, and a persistent one keeps the job's granules across a kill -9 and a restart.
/// </summary>
public sealed class MirrorTargetBitmapTests() : ServiceTest(watchEvents: true)
{
    private const long G = 65536;
    private const long Size = 8L << 20;

    private static Task<JsonNode> StartAsync(HttpClient http, object body) => http.PostJsonAsync("/api/v1/jobs/mirror", body, HttpStatusCode.Created);

    private static async Task<List<(long Offset, long Length)>> DirtyAsync(HttpClient http, string node, string bitmap) =>
        ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/{node}/bitmaps/{bitmap}/extents?offset=0&length={Size}"));

    /// <summary>Data, zeroes and a discard at unaligned places, each on top of data.</summary>
    private static async Task WriteMixAsync(HttpClient http, string node)
    {
        await http.WriteAsync(node, 3 * G + 5, ApiClient.Pattern(150_000, 1));
        await http.PostJsonAsync($"/api/v1/nodes/{node}/zero", new { offset = 40 * G + 100, length = 3 * G, mayUnmap = false }, HttpStatusCode.NoContent);
        await http.PostJsonAsync($"/api/v1/nodes/{node}/discard", new { offset = 90 * G, length = 5 * G }, HttpStatusCode.NoContent);
        await http.WriteAsync(node, Size - 700, ApiClient.Pattern(700, 2));
    }

    private async Task SoftCancelAsync(string id)
    {
        await Http.PostJsonAsync($"/api/v1/jobs/{id}/cancel", new { force = false });
        var done = await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == id);
        Assert.Null(done.Data["error"]);
    }

    [Fact]
    public async Task Sync_full_marks_a_bitmap_on_the_target_whole()
    {
        await Http.CreateNodeAsync("src", Size);
        await Http.WriteAsync("src", 5 * G, ApiClient.Pattern(100_000, 3));
        await Http.CreateNodeAsync("dst", Size);
        await Http.AddBitmapAsync("dst", "t");
        await StartAsync(Http, new { id = "j", device = "src", target = "dst", sync = "full" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        Assert.Equal(Size, (long)(await Http.GetJsonAsync("/api/v1/nodes/dst/bitmaps/t"))["count"]!);
        await SoftCancelAsync("j");
    }

    [Theory]
    [InlineData("background", 65536)]
    [InlineData("write-blocking", 4096)]
    public async Task Sync_none_records_each_copied_write_on_the_target(string copyMode, long granularity)
    {
        // Both hold the same data; from now on only new writes are copied.
        await Http.CreateNodeAsync("src", Size);
        await Http.CreateNodeAsync("dst", Size);
        foreach (var node in new[] { "src", "dst" })
            await Http.WriteAsync(node, 0, ApiClient.Pattern((int)Size, 9));
        await Http.AddBitmapAsync("dst", "t", granularity);
        await StartAsync(Http, new { id = "j", device = "src", target = "dst", sync = "none", copyMode });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        Assert.Empty(await DirtyAsync(Http, "dst", "t"));
        await Http.AddBitmapAsync("src", "s", granularity);

        await WriteMixAsync(Http, "src");
        await SoftCancelAsync("j");

        // Background copies whole job granules (64 KiB), write-blocking copies each request as it
        // is: either way the target's bitmap equals one of that granularity on the device.
        var written = await DirtyAsync(Http, "src", "s");
        Assert.NotEmpty(written);
        Assert.Equal(written, await DirtyAsync(Http, "dst", "t"));
        Assert.Equal(await Http.ReadAsync("src", 0, Size), await Http.ReadAsync("dst", 0, Size));
    }

    /// <summary>
    /// The job's writes go through the target's journal: after a kill -9 (the service as a child
    /// process) a persistent bitmap on the target comes back consistent with every granule the job
    /// wrote; on the old code it held none of them.
    /// </summary>
    [Fact]
    public async Task A_persistent_bitmap_on_the_target_keeps_the_jobs_granules_across_a_kill()
    {
        var dir = Directory.CreateTempSubdirectory("blockmirror-target-bitmap-").FullName;
        try
        {
            List<(long Offset, long Length)> written;
            await using (var child = await ChildService.StartAsync(dir))
            {
                var http = child.Http;
                await http.CreateNodeAsync("src", Size);
                await http.CreateNodeAsync("dst", Size);
                await http.AddBitmapAsync("dst", "p", persistent: true);
                await http.AddBitmapAsync("src", "s");
                await using var events = await EventWaiter.StartAsync(http);
                await StartAsync(http, new { id = "j", device = "src", target = "dst", sync = "none", copyMode = "write-blocking" });
                await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
                await WriteMixAsync(http, "src");
                written = await DirtyAsync(http, "src", "s");
                Assert.NotEmpty(written);
                Assert.Equal(written, await DirtyAsync(http, "dst", "p"));
                child.Kill();
            }

            await using (var child = await ChildService.StartAsync(dir))
            {
                var p = await child.Http.GetJsonAsync("/api/v1/nodes/dst/bitmaps/p");
                Assert.False((bool)p["inconsistent"]!, p.ToJsonString());
                Assert.Equal(written, await DirtyAsync(child.Http, "dst", "p"));
            }
        }
        finally
        {
            BlockMirrorFactory.DeleteDir(dir);
        }
    }
}
