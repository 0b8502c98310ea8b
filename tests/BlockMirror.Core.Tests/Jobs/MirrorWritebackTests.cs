using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Issue 15 (mirror to READY): the job starts the target's writeback behind its copy
/// (<see cref="TargetWriteback"/>, sync_file_range WRITE of completed chunks), so the flush before
/// READY finds little left. A hint is only a hint: a target that refuses it is asked once, the job
/// goes on as before (READY, no error event, a target equal to the device).
/// </summary>
public sealed class MirrorWritebackTests : IAsyncDisposable
{
    private const long Size = 16L << 20;
    private const int ESPIPE = 29;
    private readonly MirrorFixture _f = new();

    public ValueTask DisposeAsync() => _f.DisposeAsync();

    private async Task SoftCancelAsync(string id)
    {
        await _f.Layer.CancelJobAsync(id, force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync(id)).Name);
    }

    /// <summary>Counts the hints <paramref name="image"/> is asked for, answering each with <paramref name="errno"/> (0: the kernel's answer).</summary>
    private static (TaskCompletionSource First, Func<int> Count) Observe(RawFileImage image, int errno)
    {
        var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var calls = 0;
        image.WritebackFault = (_, _) =>
        {
            Interlocked.Increment(ref calls);
            first.TrySetResult();
            return errno;
        };
        return (first, () => Volatile.Read(ref calls));
    }

    /// <summary>
    /// A 16 MiB copy is hinted in quarters (4 MiB steps of 1 MiB chunks): the kernel is asked during
    /// the job and takes the hints; the target ends equal to the device.
    /// </summary>
    [Fact]
    public async Task A_full_mirror_starts_the_targets_writeback_behind_its_copy()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(1501).NextBytes(model);
        await src.WriteAsync(0, model);
        var (first, calls) = Observe((RawFileImage)dst.Image, errno: 0);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        Assert.Equal(4L << 20, job.Writeback.Step);
        await _f.WaitReadyAsync("job0");
        await first.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await SoftCancelAsync("job0");

        Assert.True(calls() >= 1);
        Assert.False(job.Writeback.Refused);
        Assert.Empty(_f.Events.Named("BLOCK_JOB_ERROR"));
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// A target that refuses the hint (ESPIPE, as for a pipe; any errno counts) is asked exactly once
    /// for the whole job, whatever is copied after: the job reaches READY with no error event and the
    /// target equal to the device (the flush before READY writes everything, as without hints).
    /// </summary>
    [Theory]
    [InlineData(ESPIPE)]
    [InlineData(LibC.EINVAL)]
    [InlineData(5 /* EIO */)]
    public async Task A_target_refusing_writeback_hints_is_asked_once_and_the_job_goes_on(int errno)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(errno).NextBytes(model);
        await src.WriteAsync(0, model);
        var (first, calls) = Observe((RawFileImage)dst.Image, errno);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await first.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await SoftCancelAsync("job0");

        Assert.Equal(1, calls());
        Assert.True(job.Writeback.Refused);
        Assert.Equal(0, job.Writeback.Hints);
        Assert.Empty(_f.Events.Named("BLOCK_JOB_ERROR"));
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// Scattered 64 KiB granules (an incremental's work) are left to the flush, never hinted one by
    /// one; a contiguous run of 1 MiB chunks in the same job is. 4 MiB of each: two steps of 4 MiB.
    /// </summary>
    [Fact]
    public async Task Scattered_small_pieces_are_left_to_the_flush_and_whole_chunks_are_hinted()
    {
        const int MiB = 1 << 20;
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(1503).NextBytes(model);
        await src.WriteAsync(0, model);
        await dst.WriteAsync(0, model);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "inc", 65536, persistent: false, disabled: false));
        var random = new Random(1504);
        for (var at = 0; at < 8 * MiB; at += 128 * 1024) // every other granule of the first 8 MiB
        {
            random.NextBytes(model.AsSpan(at, 65536));
            await src.WriteAsync(at, model.AsMemory(at, 65536));
        }
        random.NextBytes(model.AsSpan(8 * MiB, 4 * MiB));
        await src.WriteAsync(8 * MiB, model.AsMemory(8 * MiB, 4 * MiB));
        var hinted = new System.Collections.Concurrent.ConcurrentQueue<(long Offset, long Length)>();
        var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ((RawFileImage)dst.Image).WritebackFault = (offset, length) =>
        {
            hinted.Enqueue((offset, length));
            first.TrySetResult();
            return 0;
        };

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Bitmap = "inc", BitmapMode = BitmapMode.OnSuccess });
        await _f.WaitReadyAsync("job0");
        await first.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await SoftCancelAsync("job0");

        Assert.NotEmpty(hinted);
        Assert.All(hinted, h => Assert.True(h.Length >= TargetWriteback.MinRange && h.Offset >= 8 * MiB, $"hinted [{h.Offset}, +{h.Length})"));
        Assert.False(job.Writeback.Refused);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>An image that is no file of the page cache (here a wrapper, as any non-raw driver) is never hinted.</summary>
    [Fact]
    public async Task A_target_without_writeback_is_never_hinted()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        var model = new byte[Size];
        new Random(1502).NextBytes(model);
        await src.WriteAsync(0, model);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await SoftCancelAsync("job0");

        Assert.True(job.Writeback.Refused);
        Assert.Equal(0, job.Writeback.Hints);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(image));
    }

    /// <summary>The hint itself on a real file: taken for a buffered image, refused (false, no exception) for an injected errno.</summary>
    [Fact]
    public async Task A_raw_file_takes_a_writeback_hint_and_reports_a_refusal()
    {
        var node = await _f.CreateRawAsync("img", Size);
        await node.WriteAsync(0, new byte[1 << 20].Select((_, i) => (byte)i).ToArray());
        var image = (RawFileImage)node.Image;

        Assert.True(image.StartWriteback(0, 1 << 20));
        image.WritebackFault = (_, _) => ESPIPE;
        Assert.False(image.StartWriteback(0, 1 << 20));
    }
}
