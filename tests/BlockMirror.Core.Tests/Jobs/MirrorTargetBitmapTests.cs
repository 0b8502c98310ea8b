using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Issue 11.4: a bitmap on a mirror's target records every write the job makes, as in QEMU, where
/// the job writes through its BlockBackend on the target node: with sync=full the bitmap is fully
/// dirty at once (QEMU zeroes the target first), with sync=none it records each copied write
/// (data, zeroes, discards; background copies and write-blocking's synchronous ones alike).
/// Users chain incremental backups from the copy with it.
/// </summary>
public sealed class MirrorTargetBitmapTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private const int G = 65536;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private Task AddBitmapAsync(string node, string name, long granularity, bool persistent = false) =>
        _f.Layer.BitmapActionAsync(new BitmapAddAction(node, name, granularity, persistent, disabled: false));

    private static List<(long, long)> Extents(DirtyBitmap bitmap) => bitmap.GetExtents(0, bitmap.Size);

    /// <summary>Data, zeroes and a discard at unaligned places, on top of data (so each changes something).</summary>
    private static async Task WriteMixAsync(BlockNode src)
    {
        var data = new byte[150_000];
        new Random(7).NextBytes(data);
        await src.WriteAsync(3 * G + 5, data);
        await src.WriteAsync(WriteRequest.ForZeroes(40 * G + 100, 3 * G, mayUnmap: false));
        await src.WriteAsync(WriteRequest.ForDiscard(90 * G, 5 * G));
        await src.WriteAsync(Size - 700, data.AsMemory(0, 700));
    }

    private async Task SoftCancelAsync(string id)
    {
        await _f.Layer.CancelJobAsync(id, force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync(id)).Name);
    }

    [Theory]
    [InlineData(MirrorCopyMode.Background)]
    [InlineData(MirrorCopyMode.WriteBlocking)]
    public async Task Sync_full_makes_a_bitmap_on_the_target_fully_dirty(MirrorCopyMode mode)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 41);
        await AddBitmapAsync("dst", "t", G);
        await AddBitmapAsync("dst", "p", 4096, persistent: true);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", CopyMode = mode });
        await _f.WaitReadyAsync("job0");
        Assert.Equal(Size, dst.GetBitmap("t").Count);
        Assert.Equal(Size, dst.GetBitmap("p").Count);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(src.Image), await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// sync=none: only what the device gets from now on is copied, and the target's bitmap records
    /// exactly that: the background copy works in job granules, so a target bitmap of the job's
    /// granularity ends up equal to one on the device.
    /// </summary>
    [Fact]
    public async Task Sync_none_background_records_each_copied_write()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        await MirrorFixture.WritePatternAsync(src, model, 0x21, 0, (int)Size);
        await MirrorFixture.WritePatternAsync(dst, new byte[Size], 0x21, 0, (int)Size);
        await AddBitmapAsync("dst", "t", G);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None });
        await _f.WaitReadyAsync("job0");
        Assert.Equal(0, dst.GetBitmap("t").Count);
        await AddBitmapAsync("src", "s", G);

        await WriteMixAsync(src);
        await SoftCancelAsync("job0");

        Assert.NotEmpty(Extents(src.GetBitmap("s")));
        Assert.Equal(Extents(src.GetBitmap("s")), Extents(dst.GetBitmap("t")));
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(src.Image), await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// Write-blocking, in sync: each request is copied synchronously byte for byte, so a 4 KiB
    /// target bitmap records each request's own range, as one on the device does.
    /// </summary>
    [Fact]
    public async Task Write_blocking_records_each_synchronous_copy()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await AddBitmapAsync("dst", "t", 4096);
        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None, CopyMode = MirrorCopyMode.WriteBlocking,
        });
        await _f.WaitReadyAsync("job0");
        Assert.True(job.ActivelySynced);
        await AddBitmapAsync("src", "s", 4096);

        await WriteMixAsync(src);
        Assert.True(job.ActivelySynced);
        Assert.Equal(0, job.WorkingBitmap.Count);

        Assert.NotEmpty(Extents(src.GetBitmap("s")));
        Assert.Equal(Extents(src.GetBitmap("s")), Extents(dst.GetBitmap("t")));
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(src.Image), await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>The guard still refuses every other writer, and a refused write journals and marks nothing.</summary>
    [Fact]
    public async Task An_outside_write_to_the_target_is_refused_and_marks_nothing()
    {
        await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await AddBitmapAsync("dst", "t", G);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None });
        await _f.WaitReadyAsync("job0");
        var refused = await Assert.ThrowsAsync<BlockException>(() => dst.WriteAsync(0, new byte[4096]).AsTask());
        Assert.Equal("node-busy", refused.Code);
        Assert.Equal(0, dst.GetBitmap("t").Count);
    }

    /// <summary>
    /// The job's writes enter the target's quiesce gate, and a write-blocking write holds the
    /// device's gate while its copy enters the target's: a transaction must quiesce the target after
    /// the device, or the two wait for each other. Here the target is the older node (first in the
    /// registry), and a transaction starts while a write is between its source write and its copy.
    /// </summary>
    [Fact]
    public async Task A_transaction_during_a_write_blocking_copy_onto_an_older_node_finishes()
    {
        var dst = await _f.CreateRawAsync("dst", Size);
        var (src, image) = await _f.CreateFaultyAsync("src", Size);
        await AddBitmapAsync("dst", "t", G);
        await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None, CopyMode = MirrorCopyMode.WriteBlocking,
        });
        await _f.WaitReadyAsync("job0");

        // The next source write stops after it reached the source image, before the job copies it.
        var inWrite = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var release = new ManualResetEventSlim();
        image.Written = (_, _) =>
        {
            image.Written = null;
            inWrite.TrySetResult();
            release.Wait(RecordingEventSink.Timeout);
        };
        var write = Task.Run(() => src.WriteAsync(5 * G, new byte[3 * G]).AsTask());
        await inWrite.Task.WaitAsync(RecordingEventSink.Timeout);
        var transaction = _f.Layer.BitmapActionAsync(new BitmapClearAction("dst", "t"));
        // The transaction has reached the device's gate (it waits there for the write): let the write go on.
        var deadline = DateTime.UtcNow + RecordingEventSink.Timeout;
        while (!src.QuiesceGate.IsQuiesced)
        {
            Assert.True(DateTime.UtcNow < deadline, "the transaction never reached the device's gate");
            await Task.Yield();
        }
        release.Set();

        await write.WaitAsync(TimeSpan.FromSeconds(30));
        await transaction.WaitAsync(TimeSpan.FromSeconds(30));
        // The clear came after the copy had marked the target's bitmap, with both quiesced.
        Assert.Equal(0, dst.GetBitmap("t").Count);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(src.Image), await MirrorFixture.ReadAllAsync(dst.Image));
    }
}
