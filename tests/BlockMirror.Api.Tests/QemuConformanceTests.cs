using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Over REST, the cases where BlockMirror answered differently from qemu-storage-daemon 7.2
/// (issue 11), and a mirror into the service's own NBD export (issue 10, case 15).
/// </summary>
public sealed class QemuConformanceTests() : ServiceTest(WithNbd(), watchEvents: true)
{
    private const long Size = 4L << 20;

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", Size);
        await Http.CreateNodeAsync("copy", Size);
        await Http.CreateNodeAsync("other", Size);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern((int)Size, 3));
    }

    /// <summary>A job that stays running: one 1 MiB claim at speed 1 owes the limiter for days.</summary>
    private Task<System.Text.Json.Nodes.JsonNode> StartSlowAsync(string id = "rj", string device = "disk0", string target = "copy") =>
        Http.PostJsonAsync("/api/v1/jobs/mirror", new { id, sync = "full", device, target, speed = 1, bufSize = 1 << 20 }, HttpStatusCode.Created);

    [Fact]
    public async Task Read_only_export_of_an_enabled_bitmap_is_refused()
    {
        await Http.AddBitmapAsync("disk0", "b0");
        var p = await Http.PostProblemAsync("/api/v1/exports", new { name = "ro", node = "disk0", writable = false, bitmaps = new[] { "b0" } }, 409, "bitmap-enabled");
        Assert.Equal("Enabled bitmap 'b0' incompatible with readonly export", (string?)p["detail"]);
        // The first listed bitmap is the one reported, as in QEMU.
        var second = await Http.PostProblemAsync("/api/v1/exports", new { name = "ro", node = "disk0", writable = false, bitmaps = new[] { "b0", "missing" } }, 409, "bitmap-enabled");
        Assert.Equal("Enabled bitmap 'b0' incompatible with readonly export", (string?)second["detail"]);
        Assert.Empty((await Http.GetJsonAsync("/api/v1/exports"))["items"]!.AsArray());
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["busy"]!);

        await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/disable", new { });
        await Http.PostJsonAsync("/api/v1/exports", new { name = "ro", node = "disk0", writable = false, bitmaps = new[] { "b0" } }, HttpStatusCode.Created);
    }

    [Fact]
    public async Task Soft_cancel_of_a_user_paused_job_is_refused()
    {
        await StartSlowAsync();
        await Http.PostJsonAsync("/api/v1/jobs/rj/pause", new { });
        await Events.WaitStatusAsync("rj", "paused");

        var p = await Http.PostProblemAsync("/api/v1/jobs/rj/cancel", new { force = false }, 409, "job-paused");
        Assert.Equal("The block job for device 'rj' is currently paused", (string?)p["detail"]);
        await Http.PostProblemAsync("/api/v1/jobs/rj/cancel", new { }, 409, "job-paused");
        var job = await Http.GetJsonAsync("/api/v1/jobs/rj");
        Assert.Equal("paused", (string?)job["status"]);
        Assert.True((bool)job["paused"]!);

        await Http.PostJsonAsync("/api/v1/jobs/rj/cancel", new { force = true });
        await Events.WaitAsync("BLOCK_JOB_CANCELLED", d => (string?)d["id"] == "rj");
    }

    [Fact]
    public async Task Soft_cancel_in_pending_is_a_force_cancel_without_pivot()
    {
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "copy", autoFinalize = false, autoDismiss = false }, HttpStatusCode.Created);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        await Http.PostJsonAsync("/api/v1/jobs/j/complete", new { });
        await Events.WaitAsync("BLOCK_JOB_PENDING", d => (string?)d["id"] == "j");

        var accepted = await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = false });
        Assert.Equal("j", (string?)accepted["id"]);
        var cancelled = await Events.WaitAsync("BLOCK_JOB_CANCELLED", d => (string?)d["id"] == "j");
        Assert.Null(cancelled.Data["error"]);
        await Events.WaitStatusAsync("j", "concluded");
        Assert.Equal(["running", "ready", "waiting", "pending", "aborting", "concluded"], Events.StatusesOf("j").Where(s => s != "created").ToArray());
        var job = await Http.GetJsonAsync("/api/v1/jobs/j");
        Assert.Equal("concluded", (string?)job["status"]);
        Assert.Equal("Operation canceled", (string?)job["error"]);

        var p = await Http.PostProblemAsync("/api/v1/jobs/j/finalize", new { }, 409, "job-verb-not-allowed");
        Assert.Equal("Job 'j' in state 'concluded' cannot accept command verb 'finalize'", (string?)p["detail"]);
        Assert.Equal("disk0.img", (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["path"]);
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/copy"))["busy"]!);
        Assert.DoesNotContain(Events.Events, e => e.Name == "BLOCK_JOB_COMPLETED");
    }

    [Fact]
    public async Task The_refusal_QEMU_names_wins_when_a_request_has_two_faults()
    {
        async Task<string?> Refused(object body, int status, string code) =>
            (string?)(await Http.PostProblemAsync("/api/v1/jobs/mirror", body, status, code))["detail"];

        // Arguments before the graph: a bad granularity or buffer before "into itself".
        Assert.Equal("Parameter 'granularity' expects a power of 2",
            await Refused(new { sync = "full", device = "disk0", target = "disk0", granularity = 1000 }, 400, "invalid-granularity"));
        Assert.Equal("Invalid parameter 'buf-size'",
            await Refused(new { sync = "full", device = "disk0", target = "disk0", bufSize = -1 }, 400, "invalid-buf-size"));

        // A busy target with a bad granularity: the granularity.
        await StartSlowAsync();
        await Refused(new { sync = "full", device = "other", target = "copy", granularity = 1000 }, 400, "invalid-granularity");
        await Refused(new { sync = "full", device = "other", target = "copy" }, 409, "node-busy");

        // A merge into a busy bitmap with a missing source: the missing source.
        await Http.AddBitmapAsync("other", "t");
        await Http.PostJsonAsync("/api/v1/exports", new { name = "holder", node = "other", writable = true, bitmaps = new[] { "t" } }, HttpStatusCode.Created);
        var merge = await Http.PostProblemAsync("/api/v1/nodes/other/bitmaps/t/merge", new { sources = new[] { new { name = "nope" } } }, 404, "bitmap-not-found");
        Assert.Equal("Dirty bitmap 'nope' not found", (string?)merge["detail"]);
    }

    [Fact]
    public async Task A_patch_refused_for_its_copy_mode_does_not_set_the_speed()
    {
        await StartSlowAsync();
        using (var r = await Http.PatchAsJsonAsync("/api/v1/jobs/rj", new { speed = 12345, copyMode = "background" }))
            await ApiClient.ExpectProblemAsync(r, 409, "copy-mode-change");
        Assert.Equal(1, (long)(await Http.GetJsonAsync("/api/v1/jobs/rj"))["speed"]!);
    }

    [Fact]
    public async Task Mirror_into_the_services_own_export_of_the_device_is_refused()
    {
        var export = await Http.PostJsonAsync("/api/v1/exports", new { name = "e0", node = "disk0", writable = true }, HttpStatusCode.Created);
        await Http.PostJsonAsync("/api/v1/nodes", new { name = "loop", driver = "nbd", uri = (string)export["uri"]! }, HttpStatusCode.Created);

        var p = await Http.PostProblemAsync("/api/v1/jobs/mirror",
            new { id = "self", sync = "full", device = "disk0", target = "loop", copyMode = "write-blocking" }, 400, "mirror-into-itself");
        Assert.Contains("into itself", (string?)p["detail"], StringComparison.Ordinal);
        Assert.Empty((await Http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["busy"]!);
        // The service still answers writes to the device through its own path and the export.
        await Http.WriteAsync("loop", 0, ApiClient.Pattern(4096, 9));
        Assert.Equal(ApiClient.Pattern(4096, 9), await Http.ReadAsync("disk0", 0, 4096));
    }
}
