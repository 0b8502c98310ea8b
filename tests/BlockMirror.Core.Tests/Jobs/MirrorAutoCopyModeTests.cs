using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// copyMode auto (issue 16 item 3): a mirror whose background copy cannot keep up with the writes
/// switches itself to write-blocking and converges (QEMU leaves that switch to the operator:
/// block-job-change, qemu-semantics d.5).
/// </summary>
public sealed class MirrorAutoCopyModeTests : IAsyncLifetime
{
    private const long Size = 4L << 20;
    private const int Block = 64 << 10;
    // The copy's limit; the writers dirty several times as much.
    private const long Speed = 2L << 20;
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(1);
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync()
    {
        _f.Layer.AutoCopyModeWindow = Window;
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _f.DisposeAsync();

    /// <summary>
    /// Whole-granule random writes, one after the other, a few hundred a second (far above
    /// <see cref="Speed"/>); the model is updated after each write returns.
    /// </summary>
    private static async Task WriterAsync(BlockNode node, byte[] model, int seed, CancellationToken stop)
    {
        var random = new Random(seed);
        var data = new byte[Block];
        while (!stop.IsCancellationRequested)
        {
            var off = random.Next((int)(Size / Block)) * (long)Block;
            random.NextBytes(data);
            await node.WriteAsync(off, data);
            data.CopyTo(model, off);
            // Paces the writer (a guest's write rate), so two writers do not take every core.
            await Task.Delay(2, CancellationToken.None);
        }
    }

    private async Task<byte[]> CreateSourceAsync(string name, int seed)
    {
        var node = await _f.CreateRawAsync(name, Size);
        await _f.CreateRawAsync(name + "-copy", Size);
        var model = new byte[Size];
        new Random(seed).NextBytes(model);
        await node.WriteAsync(0, model);
        return model;
    }

    private MirrorOptions Mirror(string device, MirrorCopyMode mode) => new()
    {
        Id = device, Device = device, Target = device + "-copy", Speed = Speed, BufSize = 1 << 20, CopyMode = mode,
    };

    [Fact]
    public async Task Writer_faster_than_the_copy_keeps_background_from_ready_while_auto_switches_converges_and_completes_exact()
    {
        // Two twins, each with its own writer: one mirror in background, one in auto.
        var backgroundModel = await CreateSourceAsync("bg", 1);
        var autoModel = await CreateSourceAsync("auto", 2);
        var bgNode = _f.Layer.GetNode("bg");
        var autoNode = _f.Layer.GetNode("auto");
        using var stopBackground = new CancellationTokenSource();
        using var stopAuto = new CancellationTokenSource();
        var bgWriter = Task.Run(() => WriterAsync(bgNode, backgroundModel, 11, stopBackground.Token));
        var autoWriter = Task.Run(() => WriterAsync(autoNode, autoModel, 12, stopAuto.Token));

        var background = await _f.StartAsync(Mirror("bg", MirrorCopyMode.Background));
        var auto = await _f.StartAsync(Mirror("auto", MirrorCopyMode.Auto));
        var autoInfo = auto.GetInfo();
        Assert.Equal("auto", autoInfo.CopyMode);
        Assert.Equal("background", autoInfo.EffectiveCopyMode);
        Assert.Null(autoInfo.CopyModeSwitchedAt);

        // The switch says why: over a whole window the remaining bytes did not shrink while writes went on.
        var switched = await _f.Events.WaitForAsync(MirrorJob.CopyModeSwitchedEvent, "auto");
        Assert.Equal("not-converging", switched.Str("reason"));
        Assert.Equal("write-blocking", switched.Str("copyMode"));
        Assert.Equal("mirror", switched.Str("type"));
        Assert.True(switched.Data.GetProperty("windowSeconds").GetDouble() >= Window.TotalSeconds);
        // Shrinking by one chunk (1 MiB here) or less is no progress.
        Assert.True(switched.Num("remainingAtWindowStart") - switched.Num("remaining") <= 1L << 20, "remaining shrank over the window");
        Assert.True(switched.Num("remaining") > 0);
        Assert.True(switched.Num("dirtiedInWindow") > 0);
        Assert.Equal(switched.Num("len") - switched.Num("offset"), switched.Num("remaining"));
        Assert.True(switched.Num("copyRate") > 0);
        Assert.True(switched.Num("dirtyRate") > 0);
        autoInfo = auto.GetInfo();
        Assert.Equal("auto", autoInfo.CopyMode);
        Assert.Equal("write-blocking", autoInfo.EffectiveCopyMode);
        Assert.NotNull(autoInfo.CopyModeSwitchedAt);
        Assert.Equal(MirrorCopyMode.WriteBlocking, auto.CopyMode);

        // Write-blocking, the copy only has what was dirty at the switch left: it gets there.
        await _f.WaitReadyAsync("auto");
        Assert.True(auto.ActivelySynced);
        // Its twin in background had the same writes, the same speed and more time: still behind,
        // never ready, and it did not switch.
        var bgInfo = background.GetInfo();
        Assert.Equal("running", bgInfo.Status);
        Assert.True(bgInfo.Remaining > 0);
        Assert.DoesNotContain("ready", _f.Events.StatusesOf("bg"));
        Assert.DoesNotContain(_f.Events.Named(MirrorJob.CopyModeSwitchedEvent), e => e.Str("id") == "bg");
        Assert.Equal("background", bgInfo.EffectiveCopyMode);
        Assert.Null(bgInfo.CopyModeSwitchedAt);

        await stopAuto.CancelAsync();
        await autoWriter;
        await _f.Layer.CompleteJobAsync("auto");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("auto")).Name);
        // The device now reads the target's image: every byte the writer wrote is there.
        MirrorFixture.AssertSame(autoModel, await MirrorFixture.ReadAllAsync(autoNode.Image));
        // The record keeps what happened.
        await _f.Layer.FlushJobSavesAsync();
        var record = _f.JobStore.Latest(auto.Uid)!.Snapshot;
        Assert.Equal("auto", record.CopyMode);
        Assert.Equal("write-blocking", record.EffectiveCopyMode);
        Assert.Equal(autoInfo.CopyModeSwitchedAt, record.CopyModeSwitchedAt);

        await stopBackground.CancelAsync();
        await bgWriter;
        await _f.Layer.CancelJobAsync("bg", force: true);
        await _f.WaitEndAsync("bg");
    }

    [Fact]
    public async Task Auto_without_writes_reaches_ready_in_background_however_slow_the_copy()
    {
        var model = await CreateSourceAsync("d", 7);
        // 1 MiB/s over 4 MiB: several windows in which the remaining bytes shrink by a chunk or not
        // at all (a chunk, then a second of debt) but nothing writes: write-blocking would not help.
        var job = await _f.StartAsync(new MirrorOptions { Id = "j", Device = "d", Target = "d-copy", Speed = 1L << 20, BufSize = 1 << 20, CopyMode = MirrorCopyMode.Auto });
        await _f.WaitReadyAsync("j");
        Assert.True(job.GetInfo().ReadyAt - job.CreatedAt > 2 * Window, "the copy was not slower than two windows");
        Assert.Empty(_f.Events.Named(MirrorJob.CopyModeSwitchedEvent));
        var info = job.GetInfo();
        Assert.Equal(("auto", "background"), (info.CopyMode, info.EffectiveCopyMode));
        Assert.Null(info.CopyModeSwitchedAt);
        Assert.False(info.ActivelySynced);

        // Ready: the watch is over, writes that now outpace the copy do not switch it.
        using var stop = new CancellationTokenSource();
        var writer = Task.Run(() => WriterAsync(_f.Layer.GetNode("d"), model, 8, stop.Token));
        // Nothing to wait for but time: two windows in which writes go on and the job is not in sync.
        var writing = DateTime.UtcNow;
        await WaitUntilAsync(() => DateTime.UtcNow - writing > 2 * Window && job.GetInfo().Remaining > 0);
        await _f.Layer.CompleteJobAsync("j");
        await stop.CancelAsync();
        await writer;
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("j")).Name);
        Assert.Empty(_f.Events.Named(MirrorJob.CopyModeSwitchedEvent));
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(_f.Layer.GetNode("d").Image));
    }

    [Fact]
    public async Task A_pause_does_not_count_toward_the_window()
    {
        var model = await CreateSourceAsync("auto", 3);
        var node = _f.Layer.GetNode("auto");
        using var stop = new CancellationTokenSource();
        var writes = 0;
        var writer = Task.Run(async () =>
        {
            var random = new Random(4);
            var data = new byte[Block];
            while (!stop.IsCancellationRequested)
            {
                var off = random.Next((int)(Size / Block)) * (long)Block;
                random.NextBytes(data);
                await node.WriteAsync(off, data);
                data.CopyTo(model, off);
                Interlocked.Increment(ref writes);
                await Task.Delay(2, CancellationToken.None);
            }
        });
        var job = await _f.StartAsync(Mirror("auto", MirrorCopyMode.Auto));
        // A first chunk landed: the loop has looked at the job, its first window is open.
        await WaitUntilAsync(() => job.GetInfo().BytesCopied > 0);
        await _f.Layer.PauseJobAsync("auto");
        await _f.Events.WaitForStatusAsync("auto", "paused");

        // Paused for longer than the window while the writer goes on (it dirties the bitmap).
        var pausedAt = DateTime.UtcNow;
        var before = Volatile.Read(ref writes);
        await WaitUntilAsync(() => DateTime.UtcNow - pausedAt > 2 * Window && Volatile.Read(ref writes) > before);
        Assert.Null(job.GetInfo().CopyModeSwitchedAt);
        var resumedAt = DateTime.UtcNow;
        await _f.Layer.ResumeJobAsync("auto");

        var switched = await _f.Events.WaitForAsync(MirrorJob.CopyModeSwitchedEvent, "auto");
        var at = job.GetInfo().CopyModeSwitchedAt!.Value;
        // A whole window after the resume, not at the first look after it.
        Assert.True(at - resumedAt >= Window - TimeSpan.FromMilliseconds(20), $"switched {(at - resumedAt).TotalMilliseconds} ms after the resume");
        Assert.True(switched.Data.GetProperty("windowSeconds").GetDouble() < 2 * Window.TotalSeconds);

        await stop.CancelAsync();
        await writer;
    }

    [Fact]
    public async Task Patch_goes_to_and_from_auto_but_writes_never_go_back_from_write_blocking()
    {
        await CreateSourceAsync("d", 5);
        // speed 1: the copy stays running (a chunk then days of debt), so every verb is accepted.
        var job = await _f.StartAsync(new MirrorOptions { Id = "j", Device = "d", Target = "d-copy", Speed = 1, BufSize = 1 << 20 });

        async Task<BlockException> Refused(MirrorCopyMode mode) =>
            await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("j", mode));

        var again = await Refused(MirrorCopyMode.Background);
        Assert.Equal("copy-mode-change", again.Code);
        Assert.Equal("Change to copy mode 'background' is not implemented", again.Message);

        await _f.Layer.ChangeJobAsync("j", MirrorCopyMode.Auto);
        Assert.Equal(MirrorCopyMode.Auto, job.RequestedCopyMode);
        Assert.Equal(("auto", "background"), (job.GetInfo().CopyMode, job.GetInfo().EffectiveCopyMode));
        Assert.Equal("Expected current copy mode 'background', got 'auto'", (await Refused(MirrorCopyMode.Auto)).Message);

        // auto not yet switched → background: it stops watching.
        await _f.Layer.ChangeJobAsync("j", MirrorCopyMode.Background);
        Assert.Equal(("background", "background"), (job.GetInfo().CopyMode, job.GetInfo().EffectiveCopyMode));

        // auto → write-blocking: the switch by hand, announced like auto's own.
        await _f.Layer.ChangeJobAsync("j", MirrorCopyMode.Auto);
        var seen = _f.Events.Count;
        await _f.Layer.ChangeJobAsync("j", MirrorCopyMode.WriteBlocking);
        var switched = await _f.Events.WaitAfterAsync(seen, e => e.Name == MirrorJob.CopyModeSwitchedEvent && e.Str("id") == "j");
        Assert.Equal("requested", switched.Str("reason"));
        Assert.False(switched.Has("windowSeconds"));
        Assert.True(switched.Has("copyRate") && switched.Has("dirtyRate") && switched.Has("remaining"));
        var info = job.GetInfo();
        Assert.Equal(("write-blocking", "write-blocking"), (info.CopyMode, info.EffectiveCopyMode));
        Assert.NotNull(info.CopyModeSwitchedAt);

        // Nothing goes back, and nothing is refused half-way: the speed of a refused PATCH stays.
        Assert.Equal("Expected current copy mode 'background', got 'write-blocking'", (await Refused(MirrorCopyMode.Auto)).Message);
        Assert.Equal("Change to copy mode 'background' is not implemented", (await Refused(MirrorCopyMode.Background)).Message);
        Assert.Equal("Expected current copy mode 'background', got 'write-blocking'", (await Refused(MirrorCopyMode.WriteBlocking)).Message);
        await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("j", 5, MirrorCopyMode.Auto));
        Assert.Equal(1, job.Speed);
        Assert.Single(_f.Events.Named(MirrorJob.CopyModeSwitchedEvent));
    }

    [Fact]
    public async Task Auto_that_already_switched_refuses_a_change_back()
    {
        await CreateSourceAsync("d", 6);
        var job = await _f.StartAsync(new MirrorOptions { Id = "j", Device = "d", Target = "d-copy", Speed = 1, BufSize = 1 << 20, CopyMode = MirrorCopyMode.Auto });
        await _f.Layer.ChangeJobAsync("j", MirrorCopyMode.WriteBlocking);
        Assert.Equal("Change to copy mode 'background' is not implemented",
            (await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("j", MirrorCopyMode.Background))).Message);
        Assert.Equal(MirrorCopyMode.WriteBlocking, job.CopyMode);
    }

    /// <summary>A bounded poll of a state (every 20 ms, up to the sink's timeout).</summary>
    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + RecordingEventSink.Timeout;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in time");
            await Task.Delay(20);
        }
    }
}
