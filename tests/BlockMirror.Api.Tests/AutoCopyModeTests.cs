using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// copyMode auto over REST (issue 16 item 3): the job's fields, the switch's event on the event
/// stream, the record in the history after a restart, PATCH to and from auto, refusals.
/// </summary>
public sealed class AutoCopyModeTests : IDisposable
{
    private const long Size = 4L << 20;
    private const int Block = 64 << 10;
    private static readonly Dictionary<string, string?> s_settings = new() { ["Jobs:AutoCopyModeWindow"] = "00:00:00.500" };
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-auto-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private static Task<JsonNode> StartAsync(HttpClient http, object body) => http.PostJsonAsync("/api/v1/jobs/mirror", body, HttpStatusCode.Created);

    private static async Task<JsonNode> PatchAsync(HttpClient http, string id, object body, HttpStatusCode expected = HttpStatusCode.OK)
    {
        using var r = await http.PatchAsJsonAsync($"/api/v1/jobs/{id}", body);
        return await ApiClient.ExpectAsync(r, expected);
    }

    /// <summary>Whole-granule writes over HTTP until stopped, paced (a guest's rate), far above the copy's speed.</summary>
    private static async Task WriterAsync(HttpClient http, ImageModel model, CancellationToken stop)
    {
        var random = new Random(31);
        while (!stop.IsCancellationRequested)
        {
            var data = new byte[Block];
            random.NextBytes(data);
            await model.WriteAsync(http, "disk0", random.Next((int)(Size / Block)) * (long)Block, data);
            await Task.Delay(2, CancellationToken.None);
        }
    }

    [Fact]
    public async Task Auto_switches_over_the_event_stream_shows_it_in_the_job_and_the_history_keeps_it_after_a_restart()
    {
        DateTime switchedAt;
        await using (var service = new BlockMirrorFactory(_dir, s_settings))
        {
            var http = service.CreateClient();
            await using var events = await EventWaiter.StartAsync(service.CreateClient());
            await http.CreateNodeAsync("disk0", Size);
            var model = new ImageModel(Size);
            await model.WriteAsync(http, "disk0", 0, ApiClient.Pattern((int)Size, 3));
            await http.CreateNodeAsync("copy", Size);
            using var stop = new CancellationTokenSource();
            var writer = Task.Run(() => WriterAsync(http, model, stop.Token));

            var started = await StartAsync(http, new { id = "j", sync = "full", device = "disk0", target = "copy", copyMode = "auto", speed = "1M", bufSize = "1M" });
            Assert.Equal("auto", (string?)started["copyMode"]);
            Assert.Equal("background", (string?)started["effectiveCopyMode"]);
            Assert.Null(started["copyModeSwitchedAt"]);

            var switched = await events.WaitAsync("BLOCK_JOB_COPY_MODE_SWITCHED", d => (string?)d["id"] == "j");
            Assert.Equal("not-converging", (string?)switched.Data["reason"]);
            Assert.Equal("write-blocking", (string?)switched.Data["copyMode"]);
            // No more than one chunk (bufSize 1M: 1 MiB) less than at the window's start.
            Assert.True((long)switched.Data["remainingAtWindowStart"]! - (long)switched.Data["remaining"]! <= 1L << 20, switched.Data.ToJsonString());
            foreach (var member in new[] { "copyRate", "dirtyRate", "windowSeconds", "dirtiedInWindow", "len", "offset", "timestamp" })
                Assert.NotNull(switched.Data[member]);
            var info = await http.GetJsonAsync("/api/v1/jobs/j");
            Assert.Equal("auto", (string?)info["copyMode"]);
            Assert.Equal("write-blocking", (string?)info["effectiveCopyMode"]);
            switchedAt = (DateTime)info["copyModeSwitchedAt"]!;

            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
            Assert.True((bool)(await http.GetJsonAsync("/api/v1/jobs/j"))["activelySynced"]!);
            // Once switched, auto is write-blocking for good.
            using (var r = await http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "background" }))
                await ApiClient.ExpectProblemAsync(r, 409, "copy-mode-change");
            await stop.CancelAsync();
            await writer;
            await http.PostJsonAsync("/api/v1/jobs/j/complete", new { });
            await events.WaitStatusAsync("j", "null");
            Assert.Equal(model.Bytes, await http.ReadAsync("disk0", 0, Size));
            // The switch came before ready, in the stream's order.
            var names = events.Events.Where(e => (string?)e.Data["id"] == "j").Select(e => e.Name).ToList();
            Assert.True(names.IndexOf("BLOCK_JOB_COPY_MODE_SWITCHED") < names.IndexOf("BLOCK_JOB_READY"), string.Join(",", names));
        }

        await using var restarted = new BlockMirrorFactory(_dir, s_settings);
        var h = restarted.CreateClient();
        var done = (await h.GetJsonAsync("/api/v1/jobs?include=history"))["items"]!.AsArray().Single(j => (string?)j!["id"] == "j")!;
        Assert.Equal("completed", (string?)done["outcome"]);
        Assert.Equal("auto", (string?)done["copyMode"]);
        Assert.Equal("write-blocking", (string?)done["effectiveCopyMode"]);
        Assert.Equal(switchedAt, (DateTime)done["copyModeSwitchedAt"]!);
    }

    [Fact]
    public async Task Patch_to_and_from_auto_and_what_is_refused()
    {
        await using var service = new BlockMirrorFactory(_dir, s_settings);
        var http = service.CreateClient();
        await http.CreateNodeAsync("disk0", Size);
        await http.WriteAsync("disk0", 0, ApiClient.Pattern((int)Size, 5));
        await http.CreateNodeAsync("copy", Size);
        // speed 1: a chunk, then the job waits for days; every verb is accepted meanwhile.
        await StartAsync(http, new { id = "j", sync = "full", device = "disk0", target = "copy", speed = 1 });

        var auto = await PatchAsync(http, "j", new { copyMode = "auto" });
        Assert.Equal(("auto", "background"), ((string?)auto["copyMode"], (string?)auto["effectiveCopyMode"]));
        using (var r = await http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "auto" }))
        {
            var p = await ApiClient.ExpectProblemAsync(r, 409, "copy-mode-change");
            Assert.Contains("got 'auto'", (string?)p["detail"], StringComparison.Ordinal);
        }
        var back = await PatchAsync(http, "j", new { copyMode = "background" });
        Assert.Equal("background", (string?)back["copyMode"]);
        await PatchAsync(http, "j", new { copyMode = "auto" });
        // A refused PATCH changes nothing: neither the speed nor the mode.
        using (var r = await http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "turbo", speed = 5 }))
        {
            var p = await ApiClient.ExpectProblemAsync(r, 400, "invalid-request");
            Assert.Contains("background, write-blocking, auto", p["errors"]!["copyMode"]![0]!.ToString(), StringComparison.Ordinal);
        }
        var wb = await PatchAsync(http, "j", new { copyMode = "write-blocking" });
        Assert.Equal(("write-blocking", "write-blocking"), ((string?)wb["copyMode"], (string?)wb["effectiveCopyMode"]));
        Assert.NotNull(wb["copyModeSwitchedAt"]);
        Assert.Equal(1, (long)wb["speed"]!);
        using (var r = await http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "auto" }))
            await ApiClient.ExpectProblemAsync(r, 409, "copy-mode-change");
        await http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = true });
    }
}
