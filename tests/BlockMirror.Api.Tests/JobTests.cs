using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

public sealed class JobTests() : ServiceTest(watchEvents: true)
{
    private const long G = 65536;
    private const long Size = 8L << 20;

    private async Task<ImageModel> SourceWithDataAsync(string name = "disk0", long size = Size, int seed = 1)
    {
        await Http.CreateNodeAsync(name, size);
        var model = new ImageModel(size);
        // Data in some places, holes elsewhere: the mirror must copy the data and keep the holes.
        await model.RandomWritesAsync(Http, name, new Random(seed), 12);
        return model;
    }

    private Task<JsonNode> StartAsync(object body) => Http.PostJsonAsync("/api/v1/jobs/mirror", body, HttpStatusCode.Created);

    private byte[] FileBytes(string relative) => File.ReadAllBytes(Path.Combine(Factory.ImageRoot, relative));

    [Fact]
    public async Task Full_mirror_with_writes_before_during_and_after_ready_then_complete_pivots()
    {
        var model = await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        var random = new Random(7);

        // speed=1 makes the job copy one chunk and then wait: writes land while it runs.
        var job = await StartAsync(new { id = "job0", device = "disk0", target = "copy", sync = "full", speed = 1 });
        Assert.Equal("job0", (string?)job["id"]);
        Assert.Equal("mirror", (string?)job["type"]);
        Assert.True((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["busy"]!);
        Assert.Equal("job0", (string?)(await Http.GetJsonAsync("/api/v1/nodes/copy"))["jobId"]);
        await Events.WaitStatusAsync("job0", "running");
        await model.RandomWritesAsync(Http, "disk0", random, 10);
        await Http.SendAsync(new HttpRequestMessage(HttpMethod.Patch, "/api/v1/jobs/job0") { Content = JsonContent.Create(new { speed = 0 }) });

        var ready = await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "job0");
        Assert.Equal((long)ready.Data["len"]!, (long)ready.Data["offset"]!);
        var info = await Http.GetJsonAsync("/api/v1/jobs/job0");
        Assert.Equal("ready", (string?)info["status"]);
        Assert.True((bool)info["ready"]!);

        await model.RandomWritesAsync(Http, "disk0", random, 10);
        await Http.PostJsonAsync("/api/v1/jobs/job0/complete", new { });
        var completed = await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "job0");
        Assert.Null(completed.Data["error"]);
        await Events.WaitStatusAsync("job0", "null");
        Assert.Equal(["running", "ready", "waiting", "pending", "concluded", "null"], Events.StatusesOf("job0").Where(s => s != "created").ToArray());

        // The device now reads and writes the target's image; the target node was consumed.
        var disk0 = await Http.GetJsonAsync("/api/v1/nodes/disk0");
        Assert.Equal("copy.img", (string?)disk0["path"]);
        Assert.False((bool)disk0["busy"]!);
        using (var gone = await Http.GetAsync("/api/v1/nodes/copy"))
            await ApiClient.ExpectProblemAsync(gone, 404, "node-not-found");
        Assert.Equal(model.Bytes, await Http.ReadAsync("disk0", 0, Size));
        Assert.Equal(model.Bytes, FileBytes("copy.img"));
        Assert.Equal(model.Bytes, FileBytes("disk0.img"));
        // The job left the list (auto-dismiss) but stays in history.
        Assert.Empty((await Http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());
        var history = await Http.GetJsonAsync("/api/v1/jobs/job0?include=dismissed");
        Assert.Equal("concluded", (string?)history["status"]);
        Assert.Null(history["error"]);
    }

    [Fact]
    public async Task Holes_stay_holes_on_the_target()
    {
        await Http.CreateNodeAsync("sparse", 64L << 20);
        await Http.WriteAsync("sparse", 10L << 20, ApiClient.Pattern(1 << 20, 9));
        await Http.WriteAsync("sparse", 40L << 20, new byte[1 << 20]); // allocated zeroes
        await Http.CreateNodeAsync("t", 64L << 20);
        await StartAsync(new { id = "j", sync = "full", device = "sparse", target = "t" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { });
        await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "j");
        var target = await Http.GetJsonAsync("/api/v1/nodes/t");
        // Only the 1 MiB of data is allocated on the target: holes and zeroes were not copied as data.
        Assert.InRange((long)target["allocatedBytes"]!, 1L << 20, (1L << 20) + (256 << 10));
        Assert.Equal(ApiClient.Pattern(1 << 20, 9), await Http.ReadAsync("t", 10L << 20, 1 << 20));
    }

    [Fact]
    public async Task Soft_cancel_in_ready_leaves_a_point_in_time_copy()
    {
        var model = await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "j", sync = "full", device = "disk0", target = "copy" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        await model.RandomWritesAsync(Http, "disk0", new Random(3), 5);
        var atCancel = model.Snapshot();
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = false });
        var completed = await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "j");
        Assert.Null(completed.Data["error"]);
        await Events.WaitStatusAsync("j", "null");
        Assert.DoesNotContain(Events.Events, e => e.Name == "BLOCK_JOB_CANCELLED");

        // No pivot: the device keeps its image; the target holds the source as it was at the cancel.
        Assert.Equal("disk0.img", (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["path"]);
        await model.RandomWritesAsync(Http, "disk0", new Random(4), 5);
        Assert.Equal(atCancel, await Http.ReadAsync("copy", 0, Size));
        Assert.Equal(model.Bytes, await Http.ReadAsync("disk0", 0, Size));
    }

    [Fact]
    public async Task Cancel_before_ready_is_a_forced_cancel()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "j", sync = "full", device = "disk0", target = "copy", speed = 1 });
        await Events.WaitStatusAsync("j", "running");
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = false });
        await Events.WaitAsync("BLOCK_JOB_CANCELLED", d => (string?)d["id"] == "j");
        await Events.WaitStatusAsync("j", "null");
        Assert.Equal(["running", "aborting", "concluded", "null"], Events.StatusesOf("j").Where(s => s != "created").ToArray());
        Assert.DoesNotContain(Events.Events, e => e.Name == "BLOCK_JOB_READY");
        var disk0 = await Http.GetJsonAsync("/api/v1/nodes/disk0");
        Assert.False((bool)disk0["busy"]!);
        Assert.Equal("disk0.img", (string?)disk0["path"]);
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/copy"))["busy"]!);
    }

    [Fact]
    public async Task Sync_none_copies_only_new_writes()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "j", device = "disk0", target = "copy", sync = "none" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        var data = ApiClient.Pattern(100_000, 5);
        await Http.WriteAsync("disk0", 3_000_001, data);
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { });
        await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "j");
        Assert.Equal(data, await Http.ReadAsync("copy", 3_000_001, data.Length));
        // Old data was not copied: the target only holds the granules the new write touched.
        var extents = await Http.GetJsonAsync("/api/v1/nodes/copy/extents");
        var allocated = extents["items"]!.AsArray().Where(e => (string?)e!["type"] == "data").Sum(e => (long)e!["length"]!);
        Assert.InRange(allocated, data.Length, 3 * G);
    }

    [Fact]
    public async Task Incremental_mirror_copies_exactly_the_dirty_granules()
    {
        var model = await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "base", sync = "full", device = "disk0", target = "copy" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "base");
        await Http.PostJsonAsync("/api/v1/jobs/base/cancel", new { });
        await Events.WaitStatusAsync("base", "null");

        await Http.AddBitmapAsync("disk0", "b0");
        var random = new Random(11);
        for (var i = 0; i < 20; i++)
        {
            var data = new byte[random.Next(1, 3000)];
            random.NextBytes(data);
            await model.WriteAsync(Http, "disk0", random.NextInt64(0, Size - data.Length), data);
        }
        var dirty = (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["count"]!;
        Assert.InRange(dirty, G, 40 * G);

        var job = await StartAsync(new { id = "inc", sync = "full", device = "disk0", target = "copy", bitmap = "b0" });
        Assert.Equal("always", (string?)job["bitmapMode"]);
        Assert.Equal(G, (long)job["granularity"]!);
        var busy = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
        Assert.True((bool)busy["busy"]!);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "inc");
        var ready = await Http.GetJsonAsync("/api/v1/jobs/inc");
        Assert.Equal(dirty, (long)ready["bytesCopied"]!);
        await Http.PostJsonAsync("/api/v1/jobs/inc/cancel", new { });
        await Events.WaitStatusAsync("inc", "null");

        Assert.Equal(model.Bytes, await Http.ReadAsync("copy", 0, Size));
        var after = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
        Assert.Equal(0, (long)after["count"]!);
        Assert.False((bool)after["busy"]!);
        Assert.True((bool)after["recording"]!);
    }

    [Fact]
    public async Task Write_blocking_mirror_stays_in_sync_under_a_writer()
    {
        var model = await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "j", sync = "full", device = "disk0", target = "copy", copyMode = "write-blocking" });
        using var stop = new CancellationTokenSource();
        var random = new Random(21);
        var writer = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
                await model.RandomWritesAsync(Http, "disk0", random, 1, 70_000);
        });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        await stop.CancelAsync();
        await writer;
        // Once ready, every write completes on both sides: the job is actively synced.
        await model.RandomWritesAsync(Http, "disk0", random, 5, 70_000);
        var info = await Http.GetJsonAsync("/api/v1/jobs/j");
        Assert.True((bool)info["activelySynced"]!, info.ToJsonString());
        Assert.Equal(model.Bytes, await Http.ReadAsync("copy", 0, Size));
        await Http.PostJsonAsync("/api/v1/jobs/j/complete", new { });
        await Events.WaitStatusAsync("j", "null");
        Assert.Equal(model.Bytes, await Http.ReadAsync("disk0", 0, Size));
    }

    [Fact]
    public async Task Copy_mode_changes_only_from_background_to_write_blocking()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "j", sync = "full", device = "disk0", target = "copy" });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        using (var r = await Http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "write-blocking" }))
        {
            var info = await ApiClient.ExpectAsync(r, HttpStatusCode.OK);
            Assert.Equal("write-blocking", (string?)info["copyMode"]);
        }
        using (var r = await Http.PatchAsJsonAsync("/api/v1/jobs/j", new { copyMode = "background" }))
            await ApiClient.ExpectProblemAsync(r, 409, "copy-mode-change");
        using (var r = await Http.PatchAsJsonAsync("/api/v1/jobs/j", new { speed = -1 }))
            await ApiClient.ExpectProblemAsync(r, 400, "invalid-speed");
        using (var r = await Http.PatchAsJsonAsync("/api/v1/jobs/j", new { speed = 10485760 }))
            Assert.Equal(10485760, (long)(await ApiClient.ExpectAsync(r, HttpStatusCode.OK))["speed"]!);
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = true });
        await Events.WaitAsync("BLOCK_JOB_CANCELLED", d => (string?)d["id"] == "j");
    }

    [Fact]
    public async Task Verbs_the_status_forbids_are_refused_with_QEMU_sentences()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await StartAsync(new { id = "job0", sync = "full", device = "disk0", target = "copy", speed = 1, autoDismiss = false });
        await Events.WaitStatusAsync("job0", "running");

        var p = await Http.PostProblemAsync("/api/v1/jobs/job0/complete", new { }, 409, "job-verb-not-allowed");
        Assert.Equal("Job 'job0' in state 'running' cannot accept command verb 'complete'", (string?)p["detail"]);
        await Http.PostProblemAsync("/api/v1/jobs/job0/finalize", new { }, 409, "job-verb-not-allowed");
        await Http.PostProblemAsync("/api/v1/jobs/job0/dismiss", new { }, 409, "job-verb-not-allowed");
        await Http.PostProblemAsync("/api/v1/jobs/job0/resume", new { }, 409, "job-not-paused");
        await Http.PostJsonAsync("/api/v1/jobs/job0/pause", new { });
        await Http.PostProblemAsync("/api/v1/jobs/job0/pause", new { }, 409, "job-already-paused");
        await Events.WaitStatusAsync("job0", "paused");
        Assert.True((bool)(await Http.GetJsonAsync("/api/v1/jobs/job0"))["paused"]!);
        await Http.PostJsonAsync("/api/v1/jobs/job0/resume", new { });
        await Http.PostJsonAsync("/api/v1/jobs/job0/cancel", new { force = true });
        await Events.WaitStatusAsync("job0", "concluded");
        await Http.PostProblemAsync("/api/v1/jobs/job0/cancel", new { }, 409, "job-verb-not-allowed");
        await Http.PostProblemAsync("/api/v1/jobs/job0/pause", new { }, 409, "job-verb-not-allowed");
        var concluded = await Http.PostJsonAsync("/api/v1/jobs/job0/dismiss", new { });
        await Events.WaitStatusAsync("job0", "null");
        using (var r = await Http.GetAsync("/api/v1/jobs/job0"))
            await ApiClient.ExpectProblemAsync(r, 404, "job-not-found");
        await Http.PostProblemAsync("/api/v1/jobs/nope/pause", new { }, 404, "job-not-found");
    }

    [Fact]
    public async Task Mirror_validation_codes()
    {
        await Http.CreateNodeAsync("disk0", Size);
        await Http.CreateNodeAsync("copy", Size);
        await Http.CreateNodeAsync("small", Size / 2);
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.AddBitmapAsync("disk0", "off", disabled: true);
        await Http.CreateNodeAsync("base", Size, "ro.img");
        using (var _ = await Http.DeleteAsync("/api/v1/nodes/base")) { }
        await Http.PostJsonAsync("/api/v1/nodes", new { name = "ro", driver = "raw", path = "ro.img", readOnly = true }, HttpStatusCode.Created);

        async Task Refused(object body, int status, string code) => await Http.PostProblemAsync("/api/v1/jobs/mirror", body, status, code);
        await Refused(new { sync = "full", device = "nope", target = "copy" }, 404, "node-not-found");
        await Refused(new { sync = "full", device = "disk0", target = "nope" }, 404, "node-not-found");
        await Refused(new { sync = "full", device = "disk0", target = "disk0" }, 400, "mirror-into-itself");
        await Refused(new { sync = "full", device = "disk0", target = "ro" }, 409, "node-read-only");
        await Refused(new { sync = "full", device = "disk0", target = "small" }, 400, "size-mismatch");
        await Refused(new { device = "disk0", target = "copy", sync = "top", bitmap = "b0" }, 400, "bitmap-sync-mode");
        await Refused(new { device = "disk0", target = "copy", sync = "none", bitmap = "b0" }, 400, "bitmap-sync-mode");
        await Refused(new { sync = "full", device = "disk0", target = "copy", bitmap = "b0", granularity = G }, 400, "bitmap-and-granularity");
        await Refused(new { sync = "full", device = "disk0", target = "copy", bitmapMode = "always" }, 400, "bitmap-mode-without-bitmap");
        await Refused(new { sync = "full", device = "disk0", target = "copy", bitmap = "missing" }, 404, "bitmap-not-found");
        await Refused(new { sync = "full", device = "disk0", target = "copy", bitmap = "off" }, 409, "bitmap-disabled");
        foreach (var g in new[] { 256L, 1000, 128L << 20 })
            await Refused(new { sync = "full", device = "disk0", target = "copy", granularity = g }, 400, "invalid-granularity");
        await Refused(new { sync = "full", device = "disk0", target = "copy", bufSize = -1 }, 400, "invalid-buf-size");
        await Refused(new { sync = "full", device = "disk0", target = "copy", speed = -1 }, 400, "invalid-speed");
        await Refused(new { id = "bad id", sync = "full", device = "disk0", target = "copy" }, 400, "invalid-name");
        await Refused(new { device = "disk0", target = "copy", sync = "sideways" }, 400, "invalid-request");
        await Refused(new { target = "copy" }, 400, "invalid-request");

        // A running job makes both nodes busy, and its id taken.
        var job = await StartAsync(new { sync = "full", device = "disk0", target = "copy", speed = 1, bufSize = 4096, granularity = 4096 });
        Assert.Equal("disk0", (string?)job["id"]);
        Assert.Equal(4096, (long)job["bufSize"]!);
        await Http.CreateNodeAsync("copy2", Size);
        await Http.CreateNodeAsync("copy3", Size);
        await Refused(new { sync = "full", device = "disk0", target = "copy2" }, 409, "node-busy");
        await Refused(new { id = "disk0", sync = "full", device = "copy3", target = "copy2" }, 409, "job-exists");
        await Refused(new { id = "other", sync = "full", device = "disk0", target = "copy2" }, 409, "node-busy");
        await Refused(new { id = "other", sync = "full", device = "copy2", target = "copy" }, 409, "node-busy");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/copy"))
            await ApiClient.ExpectProblemAsync(r, 409, "node-busy");
        await Http.PostJsonAsync("/api/v1/jobs/disk0/cancel", new { force = true });
        await Events.WaitStatusAsync("disk0", "null");
    }

    [Fact]
    public async Task Bitmap_mode_never_keeps_the_named_bitmap_recording_and_untouched()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.WriteAsync("disk0", 5 * G, new byte[10]);
        await StartAsync(new { id = "j", sync = "full", device = "disk0", target = "copy", bitmap = "b0", bitmapMode = "never", speed = 1 });
        var during = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
        Assert.False((bool)during["busy"]!);
        Assert.True((bool)during["recording"]!);
        await Http.WriteAsync("disk0", 50 * G, new byte[10]);
        await Http.PatchAsJsonAsync("/api/v1/jobs/j", new { speed = 0 });
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { });
        await Events.WaitStatusAsync("j", "null");
        Assert.Equal([(5 * G, G), (50 * G, G)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/extents")));
    }

    [Fact]
    public async Task Mirror_start_in_a_transaction_is_atomic_with_bitmap_actions()
    {
        await SourceWithDataAsync();
        await Http.CreateNodeAsync("copy", Size);
        await Http.AddBitmapAsync("disk0", "b0");
        // A failing later action undoes the mirror start.
        var p = await Http.PostProblemAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "mirror-start", job = new { id = "tx", sync = "full", device = "disk0", target = "copy" } },
                new { type = "bitmap-clear", node = "disk0", name = "missing" },
            },
        }, 404, "bitmap-not-found");
        Assert.Equal(1, (int?)p["actionIndex"]);
        Assert.Empty((await Http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["busy"]!);

        var ok = await Http.PostJsonAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-add", node = "disk0", name = "since" },
                new { type = "mirror-start", job = new { id = "tx", sync = "full", device = "disk0", target = "copy" } },
            },
        });
        Assert.Equal("tx", (string?)ok["results"]![1]!["id"]);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "tx");
        await Http.PostJsonAsync("/api/v1/jobs/tx/cancel", new { force = true });
        await Events.WaitStatusAsync("tx", "null");
    }
}
