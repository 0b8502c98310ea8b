using BlockMirror.Core.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// The cases where BlockMirror answered differently from qemu-storage-daemon 7.2 on the same
/// sequences (issue 11): read-only exports of enabled bitmaps, soft cancels of paused and pending
/// jobs, and which refusal wins when a request has two faults.
/// </summary>
public sealed class QemuConformanceTests : IAsyncLifetime
{
    private const long Size = 4L << 20;
    private readonly MirrorFixture _f = new();

    public async Task InitializeAsync()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await _f.CreateRawAsync("other", Size);
        var data = new byte[Size];
        new Random(11).NextBytes(data);
        await src.WriteAsync(0, data);
    }

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private Task AddBitmapAsync(string name, bool disabled = false) =>
        _f.Layer.BitmapActionAsync(new BitmapAddAction("src", name, 65536, persistent: false, disabled));

    /// <summary>A job that stays running: one 1 MiB claim at speed 1 owes the limiter for days.</summary>
    private Task<MirrorJob> StartSlowAsync(string id = "job0", string device = "src", string target = "dst") =>
        _f.StartAsync(new MirrorOptions { Id = id, Device = device, Target = target, Speed = 1, BufSize = 1 << 20 });

    // ---- 11.1 read-only exports -------------------------------------------------------------------

    [Fact]
    public async Task Read_only_export_of_an_enabled_bitmap_is_refused()
    {
        await AddBitmapAsync("b0");
        await AddBitmapAsync("off", disabled: true);

        var e = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.AddExportAsync("ro", "src", writable: false, ["b0"]));
        Assert.Equal("bitmap-enabled", e.Code);
        Assert.Equal(BlockErrorKind.Conflict, e.Kind);
        Assert.Equal("Enabled bitmap 'b0' incompatible with readonly export", e.Message);
        Assert.Null(_f.Layer.FindExport("ro"));
        Assert.False(_f.Layer.GetNode("src").GetBitmap("b0").Busy);

        // A disabled bitmap is a stable view; a writable export may carry a recording one.
        await _f.Layer.AddExportAsync("ro", "src", writable: false, ["off"]);
        Assert.True(_f.Layer.GetNode("src").GetBitmap("off").Busy);
        await _f.Layer.AddExportAsync("rw", "src", writable: true, ["b0"]);
    }

    [Fact]
    public async Task Read_only_export_checks_each_bitmap_whole_in_list_order()
    {
        await AddBitmapAsync("b0");
        await AddBitmapAsync("busy");
        await _f.Layer.AddExportAsync("holder", "src", writable: true, ["busy"]);

        async Task<BlockException> Refused(params string[] bitmaps) =>
            await Assert.ThrowsAsync<BlockException>(() => _f.Layer.AddExportAsync("ro", "src", writable: false, bitmaps));

        // The first listed bitmap fails first, whatever a later one would fail for.
        Assert.Equal("Enabled bitmap 'b0' incompatible with readonly export", (await Refused("b0", "missing")).Message);
        Assert.Equal("bitmap-not-found", (await Refused("missing", "b0")).Code);
        Assert.Equal("Enabled bitmap 'b0' incompatible with readonly export", (await Refused("b0", "busy")).Message);
        // Within one bitmap, nbd_export_create asks "enabled?" before "busy?".
        Assert.Equal("Enabled bitmap 'busy' incompatible with readonly export", (await Refused("busy")).Message);
        Assert.Null(_f.Layer.FindExport("ro"));
        Assert.False(_f.Layer.GetNode("src").GetBitmap("b0").Busy);
    }

    // ---- 11.2 soft cancel of a paused job -----------------------------------------------------------

    [Fact]
    public async Task Soft_cancel_of_a_user_paused_job_is_refused_and_changes_nothing()
    {
        var job = await StartSlowAsync();
        await _f.Layer.PauseJobAsync("job0");
        await _f.Events.WaitForStatusAsync("job0", "paused");

        var e = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.CancelJobAsync("job0", force: false));
        Assert.Equal("job-paused", e.Code);
        Assert.Equal(BlockErrorKind.Conflict, e.Kind);
        Assert.Equal("The block job for device 'job0' is currently paused", e.Message);
        Assert.Equal(JobStatus.Paused, job.Status);
        Assert.True(job.UserPaused);
        Assert.Empty(_f.Events.Named("BLOCK_JOB_CANCELLED"));

        // A force cancel of the paused job is what QEMU accepts.
        await _f.Layer.CancelJobAsync("job0", force: true);
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("job0")).Name);
    }

    // ---- 11.3 soft cancel in pending ----------------------------------------------------------------

    [Fact]
    public async Task Soft_cancel_in_pending_is_a_force_cancel_and_a_later_finalize_cannot_pivot()
    {
        var src = _f.Layer.GetNode("src");
        var dst = _f.Layer.GetNode("dst");
        var before = await MirrorFixture.ReadAllAsync(src.Image);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", AutoFinalize = false, AutoDismiss = false });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        await _f.Events.WaitForAsync("BLOCK_JOB_PENDING", "job0");
        // A write waits for the finalize while the completed job is pending.
        var write = src.WriteAsync(0, new byte[] { 0x42 }).AsTask();

        await _f.Layer.CancelJobAsync("job0", force: false);

        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("BLOCK_JOB_CANCELLED", end.Name);
        Assert.False(end.Has("error"));
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "aborting", "concluded"], _f.Events.StatusesOf("job0"));
        Assert.Equal(Job.CanceledError, job.Error);
        Assert.Equal(Job.CanceledError, job.GetInfo().Error);

        var finalize = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.FinalizeJobAsync("job0"));
        Assert.Equal("job-verb-not-allowed", finalize.Code);
        Assert.Equal("Job 'job0' in state 'concluded' cannot accept command verb 'finalize'", finalize.Message);

        // No pivot: the device keeps its image, the target node stays, and the held write lands on the source's image.
        await write.WaitAsync(RecordingEventSink.Timeout);
        before[0] = 0x42;
        Assert.Equal("src.img", src.Path);
        Assert.Same(dst, _f.Layer.FindNode("dst"));
        Assert.False(dst.Busy);
        Assert.False(src.Busy);
        MirrorFixture.AssertSame(before, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Every_force_cancel_concludes_with_operation_canceled()
    {
        var job = await StartSlowAsync();
        await _f.Layer.CancelJobAsync("job0", force: false); // before ready: a force cancel
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("job0")).Name);
        Assert.Equal(Job.CanceledError, job.Error);
    }

    // ---- 11.5 which refusal wins ----------------------------------------------------------------

    [Fact]
    public async Task Busy_target_with_a_bad_granularity_reports_the_granularity()
    {
        await StartSlowAsync();
        var e = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Id = "j2", Device = "other", Target = "dst", Granularity = 1000 }));
        Assert.Equal("invalid-granularity", e.Code);
        Assert.Equal("Parameter 'granularity' expects a power of 2", e.Message);
        // A busy device mirrored into itself: the op blocker comes before "into itself" in QEMU.
        var busy = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Id = "j3", Device = "src", Target = "src" }));
        Assert.Equal("node-busy", busy.Code);
    }

    [Fact]
    public async Task Merge_into_a_busy_bitmap_with_a_missing_source_reports_the_missing_source()
    {
        await AddBitmapAsync("t");
        await AddBitmapAsync("s");
        await _f.Layer.AddExportAsync("holder", "src", writable: true, ["t"]);

        var missing = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapMergeAction("src", "t", [new BitmapSource(null, "nope")])));
        Assert.Equal("bitmap-not-found", missing.Code);
        Assert.Equal("Dirty bitmap 'nope' not found", missing.Message);

        // Sources are checked before the target's state; the target's state before nothing else.
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("other", "small", 65536, persistent: false, disabled: false));
        var busy = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapMergeAction("src", "t", [new BitmapSource(null, "s")])));
        Assert.Equal("bitmap-busy", busy.Code);
        Assert.Equal("Bitmap 't' is currently in use by another operation and cannot be used", busy.Message);
        var targetMissing = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapMergeAction("src", "gone", [new BitmapSource(null, "nope")])));
        Assert.Equal("Dirty bitmap 'gone' not found", targetMissing.Message);
    }

    [Fact]
    public async Task Bitmap_add_checks_the_node_and_granularity_before_the_name_length()
    {
        var missingNode = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapAddAction("nope", new string('a', 200), 65536, persistent: false, disabled: false)));
        Assert.Equal("node-not-found", missingNode.Code);
        var granularity = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapAddAction("src", new string('a', 200), 1000, persistent: false, disabled: false)));
        Assert.Equal("invalid-granularity", granularity.Code);
        // An empty name is QEMU's first check.
        var empty = await Assert.ThrowsAsync<BlockException>(() =>
            _f.Layer.BitmapActionAsync(new BitmapAddAction("nope", "", 65536, persistent: false, disabled: false)));
        Assert.Equal("invalid-name", empty.Code);
    }

    [Fact]
    public async Task A_change_refused_for_its_copy_mode_does_not_set_the_speed()
    {
        var job = await StartSlowAsync();
        var e = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("job0", 12345, MirrorCopyMode.Background));
        Assert.Equal("copy-mode-change", e.Code);
        Assert.Equal(1, job.Speed);
        var negative = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("job0", -1, MirrorCopyMode.WriteBlocking));
        Assert.Equal("invalid-speed", negative.Code);
        Assert.Equal(MirrorCopyMode.Background, job.CopyMode);
        await _f.Layer.ChangeJobAsync("job0", 0, MirrorCopyMode.WriteBlocking);
        Assert.Equal(0, job.Speed);
        Assert.Equal(MirrorCopyMode.WriteBlocking, job.CopyMode);
    }
}
