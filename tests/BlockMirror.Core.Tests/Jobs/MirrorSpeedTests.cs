using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>speed and set-speed (qemu-semantics d.4).</summary>
public sealed class MirrorSpeedTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task Slow_job_is_not_ready_after_its_first_chunk_until_set_speed_lifts_the_limit()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        var model = new byte[Size];
        new Random(41).NextBytes(model);
        await src.WriteAsync(0, model);
        var firstChunk = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        image.Written = (_, _) => firstChunk.TrySetResult();

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Speed = 1, BufSize = 1 << 20 });
        Assert.Equal(1, job.Speed);
        await firstChunk.Task.WaitAsync(RecordingEventSink.Timeout);
        // The first chunk passed; the job now owes the limiter for days.
        var info = job.GetInfo();
        Assert.Equal("running", info.Status);
        Assert.False(info.Ready);
        Assert.True(info.Remaining > 0);
        Assert.Equal(1, info.Speed);

        var negative = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.SetJobSpeedAsync("job0", -1));
        Assert.Equal("invalid-speed", negative.Code);

        await _f.Layer.SetJobSpeedAsync("job0", 0);
        await _f.WaitReadyAsync("job0");
        Assert.Equal(0, job.GetInfo().Speed);
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public void Limiter_lets_a_big_chunk_pass_and_then_charges_the_debt()
    {
        var time = new ManualTime();
        var limiter = new ByteRateLimiter(time, 1000);
        Assert.Equal(TimeSpan.Zero, limiter.Delay());
        limiter.Account(1000);
        // 1000 bytes at 100 bytes per 100 ms slice: 10 slices.
        Assert.Equal(TimeSpan.FromSeconds(1), limiter.Delay());
        time.Advance(TimeSpan.FromSeconds(1.01));
        Assert.Equal(TimeSpan.Zero, limiter.Delay());
        limiter.SetSpeed(0);
        limiter.Account(1L << 40);
        Assert.Equal(TimeSpan.Zero, limiter.Delay());
    }

    [Fact]
    public void Limiter_keeps_a_debt_accounted_while_the_slice_ended()
    {
        var time = new ManualTime();
        var limiter = new ByteRateLimiter(time, 1000);
        Assert.Equal(TimeSpan.Zero, limiter.Delay());
        // The loop dispatches a claim chunk by chunk; the first slice (100 ms) ends before it asks again.
        time.Advance(TimeSpan.FromMilliseconds(150));
        limiter.Account(500);
        time.Advance(TimeSpan.FromMilliseconds(150));
        limiter.Account(500);
        // 1000 bytes at 100 bytes per slice: 10 slices from the first account, 150 ms of them gone.
        Assert.Equal(TimeSpan.FromMilliseconds(850), limiter.Delay());
    }

    /// <summary>A clock the test moves by hand.</summary>
    private sealed class ManualTime : TimeProvider
    {
        private long _ticks = 1_000_000;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => _ticks;

        public void Advance(TimeSpan by) => _ticks += by.Ticks;
    }
}
