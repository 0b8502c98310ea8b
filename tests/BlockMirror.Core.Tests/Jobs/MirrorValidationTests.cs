using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Synchronous refusals of mirror-start, their codes and order (API.md "Jobs", qemu-semantics a.1/a.2).</summary>
public sealed class MirrorValidationTests : IAsyncLifetime
{
    private const long Size = 4L << 20;
    private readonly MirrorFixture _f = new();

    public async Task InitializeAsync()
    {
        await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await _f.CreateRawAsync("other", Size);
        await _f.CreateRawAsync("small", Size / 2);
        await _f.CreateRawAsync("rofile", Size);
        await _f.Layer.DeleteNodeAsync("rofile", deleteImage: false);
        await _f.Layer.CreateNodeAsync(new NodeSpec("ro", "raw", "rofile.img", null, null, ReadOnly: true));
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "b0", 65536, persistent: false, disabled: false));
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "off", 65536, persistent: false, disabled: true));
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "exported", 65536, persistent: false, disabled: false));
        await _f.Layer.AddExportAsync("e0", "src", writable: true, ["exported"]);
    }

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private static MirrorOptions Base => new() { Device = "src", Target = "dst" };

    public static TheoryData<string, MirrorOptions, string> Cases() => new()
    {
        { "device missing", Base with { Device = "nope" }, "node-not-found" },
        { "target missing", Base with { Target = "nope" }, "node-not-found" },
        { "into itself", Base with { Target = "src" }, "mirror-into-itself" },
        { "read-only target", Base with { Target = "ro" }, "node-read-only" },
        { "size", Base with { Target = "small" }, "size-mismatch" },
        { "bitmap with sync none", Base with { Bitmap = "b0", Sync = MirrorSyncMode.None }, "bitmap-sync-mode" },
        { "bitmap with sync top", Base with { Bitmap = "b0", Sync = MirrorSyncMode.Top }, "bitmap-sync-mode" },
        { "bitmap and granularity", Base with { Bitmap = "b0", Granularity = 65536 }, "bitmap-and-granularity" },
        { "mode without bitmap", Base with { BitmapMode = BitmapMode.Never }, "bitmap-mode-without-bitmap" },
        { "bitmap missing", Base with { Bitmap = "b404" }, "bitmap-not-found" },
        { "bitmap busy", Base with { Bitmap = "exported" }, "bitmap-busy" },
        { "bitmap disabled", Base with { Bitmap = "off" }, "bitmap-disabled" },
        { "granularity too small", Base with { Granularity = 256 }, "invalid-granularity" },
        { "granularity too large", Base with { Granularity = 128L << 20 }, "invalid-granularity" },
        { "granularity not a power of two", Base with { Granularity = 65535 }, "invalid-granularity" },
        { "buf-size negative", Base with { BufSize = -1 }, "invalid-buf-size" },
        { "job id", Base with { Id = "bad id" }, "invalid-name" },
        { "speed negative", Base with { Speed = -1 }, "invalid-speed" },
        // Order: the first failing check wins.
        { "into itself before read-only", Base with { Device = "ro", Target = "ro" }, "mirror-into-itself" },
        // QEMU compares the sizes only once the job runs: every synchronous check comes first.
        { "bitmap before size", Base with { Target = "small", Bitmap = "b404" }, "bitmap-not-found" },
        { "granularity before bitmap sync", Base with { Bitmap = "b0", Sync = MirrorSyncMode.None, Granularity = 3 }, "invalid-granularity" },
        { "granularity before into itself", Base with { Target = "src", Granularity = 1000 }, "invalid-granularity" },
        { "buf-size before into itself", Base with { Target = "src", BufSize = -1 }, "invalid-buf-size" },
        { "into itself before job id", Base with { Target = "src", Id = "bad id" }, "mirror-into-itself" },
        { "speed before read-only", Base with { Target = "ro", Speed = -1 }, "invalid-speed" },
        { "read-only before size", Base with { Target = "ro", Device = "small" }, "node-read-only" },
        { "bitmap before granularity", Base with { Bitmap = "b404", BufSize = -1 }, "bitmap-not-found" },
        { "granularity before buf-size", Base with { Granularity = 3, BufSize = -1 }, "invalid-granularity" },
        { "buf-size before speed", Base with { BufSize = -1, Speed = -1 }, "invalid-buf-size" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Is_refused_with_the_code_QEMU_gives(string because, MirrorOptions options, string code)
    {
        var e = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(options));
        Assert.True(code == e.Code, $"{because}: expected {code}, got {e.Code} ({e.Message})");
        Assert.Empty(_f.Layer.Jobs);
        Assert.False(_f.Layer.GetNode("src").Busy);
        Assert.False(_f.Layer.GetNode("dst").Busy);
        Assert.Null(_f.Layer.GetNode("src").Filter);
        Assert.False(_f.Layer.GetNode("src").GetBitmap("b0").Busy);
        Assert.Empty(_f.Events.Events);
    }

    [Fact]
    public async Task Qemu_sentences()
    {
        async Task<string> MessageOf(MirrorOptions o) => (await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(o))).Message;
        Assert.Equal("Can't mirror node into itself", await MessageOf(Base with { Target = "src" }));
        Assert.Equal("Source and target image have different sizes", await MessageOf(Base with { Target = "small" }));
        Assert.Equal("Sync mode 'none' not supported with bitmap.", await MessageOf(Base with { Bitmap = "b0", Sync = MirrorSyncMode.None }));
        Assert.Equal("Granularity and bitmap cannot both be set", await MessageOf(Base with { Bitmap = "b0", Granularity = 65536 }));
        Assert.Equal("Cannot specify bitmap sync mode without a bitmap", await MessageOf(Base with { BitmapMode = BitmapMode.Always }));
        Assert.Equal("Dirty bitmap 'b404' not found", await MessageOf(Base with { Bitmap = "b404" }));
        Assert.Equal("Bitmap 'off' is not enabled", await MessageOf(Base with { Bitmap = "off" }));
        Assert.Equal("Parameter 'granularity' expects a value in range [512B, 64MB]", await MessageOf(Base with { Granularity = 256 }));
        Assert.Equal("Parameter 'granularity' expects a power of 2", await MessageOf(Base with { Granularity = 65535 }));
        Assert.Equal("Invalid parameter 'buf-size'", await MessageOf(Base with { BufSize = -1 }));
        Assert.Equal("Parameter 'speed' expects a non-negative value", await MessageOf(Base with { Speed = -1 }));
    }

    [Fact]
    public async Task Busy_nodes_and_taken_ids_are_refused()
    {
        // Data everywhere and speed=1: the job stays running (not ready) for the whole test.
        var data = new byte[Size];
        new Random(3).NextBytes(data);
        await _f.Layer.GetNode("src").WriteAsync(0, data);
        // One 1 MiB claim per iteration: after the first, the limiter holds the job for days.
        var job = await _f.StartAsync(Base with { Id = "job0", Speed = 1, BufSize = 1 << 20 });
        Assert.Equal(65536, job.Granularity);

        var busy = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Device = "src", Target = "other" }));
        Assert.Equal("node-busy", busy.Code);
        Assert.Equal("Node 'src' is busy: block device is in use by block job: mirror (job0)", busy.Message);
        var targetBusy = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Device = "other", Target = "dst" }));
        Assert.Equal("node-busy", targetBusy.Code);
        await _f.CreateRawAsync("x1", Size);
        await _f.CreateRawAsync("x2", Size);
        var taken = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Id = "job0", Device = "x1", Target = "x2" }));
        Assert.Equal("job-exists", taken.Code);
        Assert.Equal("Job ID 'job0' already in use", taken.Message);
        var deleting = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.DeleteNodeAsync("dst", deleteImage: false));
        Assert.Equal("node-busy", deleting.Code);

        var wrongVerb = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.CompleteJobAsync("job0"));
        Assert.Equal("job-verb-not-allowed", wrongVerb.Code);
        Assert.Equal("Job 'job0' in state 'running' cannot accept command verb 'complete'", wrongVerb.Message);
        var finalize = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.FinalizeJobAsync("job0"));
        Assert.Equal("Job 'job0' in state 'running' cannot accept command verb 'finalize'", finalize.Message);

        var missing = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.PauseJobAsync("nope"));
        Assert.Equal("job-not-found", missing.Code);
        Assert.Equal("Job not found", missing.Message);

        await _f.Layer.CancelJobAsync("job0", force: false);
        await _f.WaitEndAsync("job0");
        // A dismissed job's id is free again.
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "x1", Target = "x2" });
    }

    [Fact]
    public async Task Buf_size_is_rounded_up_and_bitmap_granularity_is_taken()
    {
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "b4k", 4096, persistent: false, disabled: false));
        var job = await _f.StartAsync(Base with { Id = "j", Bitmap = "b4k", BufSize = 5000, Speed = 1 });
        Assert.Equal(4096, job.Granularity);
        Assert.Equal(8192, job.BufSize);
        Assert.Equal(BitmapMode.Always, job.BitmapMode);
        var info = job.GetInfo();
        Assert.Equal("b4k", info.Bitmap);
        Assert.Equal("always", info.BitmapMode);
        Assert.Equal("full", info.Sync);
        Assert.Equal("background", info.CopyMode);
    }

    [Fact]
    public async Task Mirror_start_in_a_failing_transaction_leaves_nothing()
    {
        var e = await Assert.ThrowsAsync<TransactionFailedException>(() => _f.Layer.TransactionAsync(
        [
            new MirrorStartAction(Base with { Id = "j", Bitmap = "b0" }),
            new BitmapAddAction("src", "b0", 65536, persistent: false, disabled: false),
        ]));
        Assert.Equal(1, e.ActionIndex);
        Assert.Empty(_f.Layer.Jobs);
        var b0 = _f.Layer.GetNode("src").GetBitmap("b0");
        Assert.False(b0.Busy);
        Assert.True(b0.Recording);
        Assert.Null(_f.Layer.GetNode("src").Filter);
        Assert.Null(_f.Layer.GetNode("dst").Filter);
        Assert.Empty(_f.Events.Events);
    }
}
