using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Issue 12 item 4: a concluded job says how it ended (completed, cancelled soft or force, failed)
/// with its timestamps, bytes and duration; finished jobs stay listed after dismissal, across a
/// restart, paged; events carry a timestamp; a paused job does not show its last rates.
/// </summary>
public sealed class JobHistoryTests : IDisposable
{
    private const long Size = 8L << 20;
    private const long BigSize = 64L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-history-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private static async Task WriteDataAsync(HttpClient http, string node, int pieces)
    {
        for (var i = 0; i < pieces; i++)
            await http.WriteAsync(node, i * (1L << 20), ApiClient.Pattern(1 << 20, (byte)(i + 1)));
    }

    private static async Task StartAsync(HttpClient http, object body) =>
        await http.PostJsonAsync("/api/v1/jobs/mirror", body, HttpStatusCode.Created);

    private static async Task<JsonArray> HistoryAsync(HttpClient http, string query = "") =>
        (await http.GetJsonAsync($"/api/v1/jobs?include=history{query}"))["items"]!.AsArray();

    private static JsonNode Find(JsonArray items, string id) =>
        items.Single(j => (string?)j!["id"] == id)!;

    private static DateTime Time(JsonNode job, string member) => (DateTime)job[member]!;

    [Fact]
    public async Task Completed_soft_cancelled_and_force_cancelled_jobs_say_so_after_dismissal()
    {
        await using var service = new BlockMirrorFactory(_dir);
        var http = service.CreateClient();
        await using var events = await EventWaiter.StartAsync(service.CreateClient());
        await http.CreateNodeAsync("disk0", Size);
        await WriteDataAsync(http, "disk0", 4);
        foreach (var t in new[] { "t1", "t2", "t3" })
            await http.CreateNodeAsync(t, Size);

        // Completed: ready, complete, pivot.
        await StartAsync(http, new { id = "done", sync = "full", device = "disk0", target = "t1" });
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "done");
        await http.PostJsonAsync("/api/v1/jobs/done/complete", new { });
        await events.WaitStatusAsync("done", "null");
        // Soft cancel in ready: BLOCK_JOB_COMPLETED without error, like a completion, but no pivot.
        await StartAsync(http, new { id = "soft", sync = "full", device = "disk0", target = "t2" });
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "soft");
        await http.PostJsonAsync("/api/v1/jobs/soft/cancel", new { force = false });
        await events.WaitStatusAsync("soft", "null");
        // Force cancel in the same state.
        await StartAsync(http, new { id = "force", sync = "full", device = "disk0", target = "t3" });
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "force");
        await http.PostJsonAsync("/api/v1/jobs/force/cancel", new { force = true });
        await events.WaitStatusAsync("force", "null");

        // All three were dismissed (autoDismiss): gone from the list, kept in the history.
        Assert.Empty((await http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());
        var history = await HistoryAsync(http);
        Assert.Equal(["force", "soft", "done"], history.Select(j => (string)j!["id"]!).ToArray());

        var done = Find(history, "done");
        Assert.Equal("completed", (string?)done["outcome"]);
        Assert.Null(done["cancelMode"]);
        Assert.Null(done["error"]);
        Assert.InRange((long)done["bytesCopied"]!, 4L << 20, Size); // the data at least; holes may be skipped
        var soft = Find(history, "soft");
        Assert.Equal("cancelled", (string?)soft["outcome"]);
        Assert.Equal("soft", (string?)soft["cancelMode"]);
        Assert.Null(soft["error"]);
        var force = Find(history, "force");
        Assert.Equal("cancelled", (string?)force["outcome"]);
        Assert.Equal("force", (string?)force["cancelMode"]);
        Assert.Equal("Operation canceled", (string?)force["error"]);

        foreach (var job in history.Select(j => j!))
        {
            Assert.Equal("concluded", (string?)job["status"]);
            Assert.True(Time(job, "createdAt") <= Time(job, "readyAt"), job.ToJsonString());
            Assert.True(Time(job, "readyAt") <= Time(job, "finishedAt"), job.ToJsonString());
            var duration = (Time(job, "finishedAt") - Time(job, "createdAt")).TotalSeconds;
            Assert.Equal(duration, (double)job["durationSeconds"]!, 3);
            Assert.Equal(0, (long)job["copyRate"]!);
            Assert.Null(job["etaSeconds"]);
            Assert.True((long)job["bytesCopied"]! > 0, job.ToJsonString());
        }
        // The same view through the job itself.
        Assert.Equal("soft", (string?)(await http.GetJsonAsync("/api/v1/jobs/soft?include=dismissed"))["cancelMode"]);
    }

    [Fact]
    public async Task A_job_cut_off_by_a_stop_is_failed_and_the_history_survives_a_restart()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await using var events = await EventWaiter.StartAsync(first.CreateClient());
            // More data than the job can have in flight (16 × 1 MiB) before its limiter holds it.
            await http.CreateNodeAsync("disk0", BigSize);
            await WriteDataAsync(http, "disk0", 32);
            await http.CreateNodeAsync("t1", BigSize);
            await http.CreateNodeAsync("t2", BigSize);
            await StartAsync(http, new { id = "done", sync = "full", device = "disk0", target = "t1" });
            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "done");
            await http.PostJsonAsync("/api/v1/jobs/done/complete", new { });
            await events.WaitStatusAsync("done", "null");
            // speed=1: one chunk, then the job waits; the stop cuts it off.
            await StartAsync(http, new { id = "cut", sync = "full", device = "disk0", target = "t2", speed = 1 });
            await events.WaitStatusAsync("cut", "running");
        }

        await using var second = new BlockMirrorFactory(_dir);
        var h = second.CreateClient();
        Assert.Empty((await h.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());
        var history = await HistoryAsync(h);
        Assert.Equal(["cut", "done"], history.Select(j => (string)j!["id"]!).ToArray());
        var cut = Find(history, "cut");
        Assert.Equal("failed", (string?)cut["outcome"]);
        Assert.Null(cut["cancelMode"]);
        Assert.Contains("service stopped", (string?)cut["error"], StringComparison.Ordinal);
        Assert.Null(cut["readyAt"]);
        Assert.NotNull(cut["finishedAt"]);
        var done = Find(history, "done");
        Assert.Equal("completed", (string?)done["outcome"]);
        Assert.NotNull(done["readyAt"]);
        Assert.InRange((long)done["bytesCopied"]!, 32L << 20, BigSize);
    }

    [Fact]
    public async Task The_history_is_paged_newest_first_without_gaps_or_repeats()
    {
        await using var service = new BlockMirrorFactory(_dir);
        var http = service.CreateClient();
        await using var events = await EventWaiter.StartAsync(service.CreateClient());
        await http.CreateNodeAsync("disk0", Size);
        await http.CreateNodeAsync("copy", Size);

        // sync none is ready at once; a soft cancel ends it.
        async Task RunAsync(string id)
        {
            await StartAsync(http, new { id, sync = "none", device = "disk0", target = "copy" });
            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == id);
            await http.PostJsonAsync($"/api/v1/jobs/{id}/cancel", new { });
            await events.WaitStatusAsync(id, "null");
        }
        for (var i = 0; i < 5; i++)
            await RunAsync($"j{i}");

        var page1 = await http.GetJsonAsync("/api/v1/jobs?include=history&limit=2");
        Assert.Equal(["j4", "j3"], page1["items"]!.AsArray().Select(j => (string)j!["id"]!).ToArray());
        var next = (string?)page1["next"];
        Assert.NotNull(next);

        // A job finishing between two pages goes to the front; the next page goes on where it was.
        await RunAsync("late");
        var page2 = await http.GetJsonAsync($"/api/v1/jobs?include=history&limit=2&after={Uri.EscapeDataString(next!)}");
        Assert.Equal(["j2", "j1"], page2["items"]!.AsArray().Select(j => (string)j!["id"]!).ToArray());
        var page3 = await http.GetJsonAsync($"/api/v1/jobs?include=history&limit=2&after={Uri.EscapeDataString((string)page2["next"]!)}");
        Assert.Equal(["j0"], page3["items"]!.AsArray().Select(j => (string)j!["id"]!).ToArray());
        Assert.Null(page3["next"]);

        var all = await HistoryAsync(http);
        Assert.Equal(["late", "j4", "j3", "j2", "j1", "j0"], all.Select(j => (string)j!["id"]!).ToArray());
        Assert.All(all, j => Assert.Equal("soft", (string?)j!["cancelMode"]));
        // The plain list has no cursor.
        Assert.Null((await http.GetJsonAsync("/api/v1/jobs"))["next"]);
    }

    [Fact]
    public async Task Events_carry_a_timestamp()
    {
        await using var service = new BlockMirrorFactory(_dir);
        var http = service.CreateClient();
        await using var events = await EventWaiter.StartAsync(service.CreateClient());
        await http.CreateNodeAsync("disk0", Size);
        await http.CreateNodeAsync("copy", Size);
        var before = DateTime.UtcNow;
        await StartAsync(http, new { id = "j", sync = "none", device = "disk0", target = "copy" });
        var ready = await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        var after = DateTime.UtcNow;
        await http.PostJsonAsync("/api/v1/jobs/j/cancel", new { });
        await events.WaitStatusAsync("j", "null");

        var stamp = (DateTime)ready.Data["timestamp"]!;
        Assert.Equal(DateTimeKind.Utc, stamp.Kind);
        Assert.InRange(stamp, before.AddSeconds(-1), after.AddSeconds(1));
        var statuses = events.Events.Where(e => e.Name == "JOB_STATUS_CHANGE").Select(e => (DateTime)e.Data["timestamp"]!).ToList();
        Assert.Equal(statuses.Order(), statuses);

        // Replayed events (Last-Event-ID) carry the time they were published, not the replay's.
        await using var replay = await EventWaiter.StartAsync(service.CreateClient(), after: ready.Id - 1);
        var again = await replay.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        Assert.Equal(stamp, (DateTime)again.Data["timestamp"]!);
    }

    [Fact]
    public async Task A_paused_job_shows_no_copy_rate_and_no_eta()
    {
        await using var service = new BlockMirrorFactory(_dir);
        var http = service.CreateClient();
        await using var events = await EventWaiter.StartAsync(service.CreateClient());
        await http.CreateNodeAsync("disk0", 32L << 20);
        await WriteDataAsync(http, "disk0", 32);
        await http.CreateNodeAsync("copy", 32L << 20);
        // 2 MiB/s: the job copies for seconds, so its rate is measured before the pause.
        await StartAsync(http, new { id = "j", sync = "full", device = "disk0", target = "copy", speed = "2M", autoDismiss = false });
        var copying = await PollAsync(http, j => (long)j["copyRate"]! > 0);
        Assert.True((long)copying["etaSeconds"]! > 0, copying.ToJsonString());

        await http.PostJsonAsync("/api/v1/jobs/j/pause", new { });
        await events.WaitStatusAsync("j", "paused");
        var paused = await http.GetJsonAsync("/api/v1/jobs/j");
        Assert.True((bool)paused["paused"]!);
        Assert.Equal(0, (long)paused["copyRate"]!);
        Assert.Null(paused["etaSeconds"]);

        await http.PostJsonAsync("/api/v1/jobs/j/resume", new { });
        await events.WaitStatusAsync("j", "running");
        await PollAsync(http, j => (long)j["copyRate"]! > 0 && j["etaSeconds"] is not null);
        await http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = true });
        await events.WaitStatusAsync("j", "concluded");
    }

    /// <summary>A bounded poll of GET /jobs/j until <paramref name="done"/> holds.</summary>
    private static async Task<JsonNode> PollAsync(HttpClient http, Func<JsonNode, bool> done)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var job = await http.GetJsonAsync("/api/v1/jobs/j");
            if (done(job))
                return job;
            Assert.True(DateTime.UtcNow < deadline, $"condition never held: {job.ToJsonString()}");
            await Task.Delay(50);
        }
    }
}
