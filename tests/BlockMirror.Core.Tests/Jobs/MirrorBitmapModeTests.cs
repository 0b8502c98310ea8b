using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// The bitmap-mirror iotest (qemu-semantics f.1) with the working-bitmap API and bitmapMode:
/// 64 MiB image, 64 KiB granularity, the four write groups and their expected bit counts, for
/// modes always / never / on-success, with and without a read failure in the first bitmap mirror.
/// Incremental rounds end with a soft cancel (point-in-time copy onto the replica, which stays a
/// node); the last round completes and pivots.
/// </summary>
public sealed class MirrorBitmapModeTests : IAsyncLifetime
{
    private const long Size = 64L << 20;
    private const long G = 65536;
    private readonly MirrorFixture _f = new();
    private readonly byte[] _model = new byte[Size];
    private BlockNode _drive = null!;
    private FaultInjectingImage _image = null!;
    private BlockNode _replica = null!;

    public async Task InitializeAsync()
    {
        (_drive, _image) = await _f.CreateFaultyAsync("drive0", Size);
        _replica = await _f.CreateRawAsync("replica", Size);
    }

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private Task WriteGroupAsync(int group) => group switch
    {
        0 => WriteAllAsync((0x49, 0x0, G), (0x6c, 0x100000, G), (0x6f, 0x2000000, G), (0x76, 0x3ff0000, G)),
        1 => WriteAllAsync((0x65, 0x0, G), (0x77, 0xf8000, G), (0x72, 0x2008000, G), (0x69, 0x3fe0000, G)),
        2 => WriteAllAsync((0x74, 0x10000, G), (0x69, 0xe8000, G), (0x6e, 0x2018000, G), (0x67, 0x3fe0000, 2 * G)),
        _ => WriteAllAsync((0xaa, 0x10000, 3 * G), (0xbb, 0xd8000, G), (0xcc, 0x2028000, G), (0xdd, 0x3fc0000, G)),
    };

    private async Task WriteAllAsync(params (byte Pattern, long Offset, long Length)[] writes)
    {
        foreach (var (pattern, offset, length) in writes)
            await MirrorFixture.WritePatternAsync(_drive, _model, pattern, offset, (int)length);
    }

    private DirtyBitmap Bitmap0 => _drive.GetBitmap("bitmap0");

    private async Task<MirrorJob> StartAsync(string id, BitmapMode mode) =>
        await _f.StartAsync(new MirrorOptions
        {
            Id = id, Device = "drive0", Target = "replica", Bitmap = "bitmap0", BitmapMode = mode,
            OnSourceError = BlockdevOnError.Report,
        });

    private async Task AssertReplicaAsync() =>
        MirrorFixture.AssertSame(_model, await MirrorFixture.ReadAllAsync(_replica.Image));

    public static TheoryData<BitmapMode, bool> Cases() => new()
    {
        { BitmapMode.Always, false },
        { BitmapMode.Always, true },
        { BitmapMode.Never, false },
        { BitmapMode.Never, true },
        { BitmapMode.OnSuccess, false },
        { BitmapMode.OnSuccess, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Bitmap_sync(BitmapMode mode, bool intermediateFailure)
    {
        // Reference mirror #0: the replica gets group 0 (full mirror, point in time).
        await WriteGroupAsync(0);
        await _f.StartAsync(new MirrorOptions { Id = "ref0", Device = "drive0", Target = "replica" });
        await _f.WaitReadyAsync("ref0");
        await _f.Layer.CancelJobAsync("ref0", force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("ref0")).Name);
        await AssertReplicaAsync();

        await _f.Layer.BitmapActionAsync(new BitmapAddAction("drive0", "bitmap0", G, persistent: false, disabled: false));
        await WriteGroupAsync(1);
        Assert.Equal(6 * G, Bitmap0.Count);
        Assert.True(Bitmap0.Recording);
        Assert.False(Bitmap0.Busy);

        // Test mirror #1.
        if (intermediateFailure)
            _image.Arm(failRead: n => n >= 2);
        var job1 = await StartAsync("t1", mode);
        Assert.Equal(mode == BitmapMode.Always, Bitmap0.Busy);
        Assert.Equal(mode != BitmapMode.Always, Bitmap0.Recording);
        if (intermediateFailure)
        {
            var end = await _f.WaitEndAsync("t1");
            Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
            Assert.Equal("Input/output error", end.Str("error"));
            Assert.Equal(G, end.Num("offset"));
            Assert.Contains(_f.Events.Named("BLOCK_JOB_ERROR"), e => e.Str("operation") == "read" && e.Str("action") == "report");
            Assert.Equal(["created", "running", "aborting", "concluded", "null"], await _f.StatusesAfterDismissAsync("t1"));
            Assert.Equal("Input/output error", job1.Error);
            _image.Arm();
        }
        else
        {
            var ready = await _f.Events.WaitForAsync("BLOCK_JOB_READY", "t1");
            Assert.Equal(6 * G, ready.Num("len"));
            Assert.Equal(6 * G, ready.Num("offset"));
            await _f.Layer.CancelJobAsync("t1", force: false);
            Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("t1")).Name);
            await AssertReplicaAsync();
        }
        var afterJob1 = (mode, intermediateFailure) switch
        {
            (BitmapMode.Never, _) => 6,
            (BitmapMode.OnSuccess, false) => 0,
            (BitmapMode.OnSuccess, true) => 6,
            (_, false) => 0,
            (_, true) => 5,
        };
        Assert.Equal(afterJob1 * G, Bitmap0.Count);
        Assert.False(Bitmap0.Busy);
        Assert.True(Bitmap0.Recording);

        // Test mirror #2, with group 2 written while it runs (paused, so the counts hold still).
        var job2 = await StartAsync("t2", mode);
        await _f.WaitReadyAsync("t2");
        await _f.Layer.PauseJobAsync("t2");
        await _f.Events.WaitForStatusAsync("t2", "standby");
        await WriteGroupAsync(2);
        var during = (mode, intermediateFailure) switch
        {
            (BitmapMode.Never, _) => 10,
            (BitmapMode.OnSuccess, false) => 7,
            (BitmapMode.OnSuccess, true) => 10,
            // always: QEMU's 9 after a failure counts job #1's leftovers not yet copied; here the
            // job was ready (leftovers copied) before group 2, so only group 2 is left.
            _ => 7,
        };
        Assert.Equal(during * G, Bitmap0.Count);
        Assert.Equal(mode == BitmapMode.Always, Bitmap0.Busy);
        Assert.True(job2.GetInfo().Remaining > 0);
        var mark = _f.Events.Count;
        await _f.Layer.ResumeJobAsync("t2");
        await _f.Events.WaitAfterAsync(mark, e => e.Name == "JOB_STATUS_CHANGE" && e.Str("id") == "t2" && e.Str("status") == "ready");
        await _f.Layer.CancelJobAsync("t2", force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("t2")).Name);
        await AssertReplicaAsync();
        Assert.Equal((mode == BitmapMode.Never ? 10 : 0) * G, Bitmap0.Count);

        await WriteGroupAsync(3);
        Assert.Equal((mode == BitmapMode.Never ? 15 : 8) * G, Bitmap0.Count);

        // Test mirror #3 completes: the device pivots onto the replica and keeps its bitmap.
        await StartAsync("t3", mode);
        await _f.WaitReadyAsync("t3");
        await _f.Layer.CompleteJobAsync("t3");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("t3")).Name);
        Assert.Equal("replica.img", _drive.Path);
        Assert.Null(_f.Layer.FindNode("replica"));
        Assert.Same(Bitmap0, _drive.FindBitmap("bitmap0"));
        Assert.Equal((mode == BitmapMode.Never ? 15 : 0) * G, Bitmap0.Count);
        MirrorFixture.AssertSame(_model, await MirrorFixture.ReadAllAsync(_drive.Image));

        // The bitmap records again and can be removed.
        await _drive.WriteAsync(0, new byte[] { 1 });
        Assert.True(Bitmap0.IsDirty(0));
        await _f.Layer.BitmapActionAsync(new BitmapRemoveAction("drive0", "bitmap0"));
        Assert.Empty(_drive.Bitmaps);
    }

    [Fact]
    public async Task Force_cancel_keeps_the_remaining_work_in_an_always_bitmap()
    {
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("drive0", "bitmap0", G, persistent: false, disabled: false));
        await WriteGroupAsync(1);
        await _f.StartAsync(new MirrorOptions
        {
            Id = "t1", Device = "drive0", Target = "replica", Bitmap = "bitmap0", Speed = 1, BufSize = G,
        });
        // speed=1: one granule is copied, then the job waits on the limiter.
        await _f.Events.WaitForStatusAsync("t1", "running");
        await _f.Layer.CancelJobAsync("t1", force: true);
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("t1")).Name);
        Assert.InRange(Bitmap0.Count, 5 * G, 6 * G);
        Assert.False(Bitmap0.Busy);
        Assert.True(Bitmap0.Recording);
    }

    [Fact]
    public async Task Writes_during_an_always_job_are_never_lost()
    {
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("drive0", "bitmap0", G, persistent: false, disabled: false));
        await WriteGroupAsync(1);
        await _f.StartAsync(new MirrorOptions { Id = "t1", Device = "drive0", Target = "replica", Bitmap = "bitmap0" });
        await WriteGroupAsync(2);
        await _f.WaitReadyAsync("t1");
        await WriteGroupAsync(3);
        await _f.Layer.CancelJobAsync("t1", force: false);
        await _f.WaitEndAsync("t1");
        // The replica started empty: it must hold exactly the granules of groups 1-3 as the source has them.
        var replica = await MirrorFixture.ReadAllAsync(_replica.Image);
        var source = await MirrorFixture.ReadAllAsync(_drive.Image);
        foreach (var granule in new long[] { 0, 1, 2, 3, 13, 14, 15, 16, 512, 513, 514, 515, 1020, 1022, 1023 })
        {
            var off = (int)(granule * G);
            MirrorFixture.AssertSame(source[off..(off + (int)G)], replica[off..(off + (int)G)]);
        }
        Assert.Equal(0, Bitmap0.Count);
    }
}
