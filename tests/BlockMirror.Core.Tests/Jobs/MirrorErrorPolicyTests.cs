using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>on-source-error / on-target-error (qemu-semantics c.7, d.8; iotest 041 read/write errors).</summary>
public sealed class MirrorErrorPolicyTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task Report_on_a_target_write_error_fails_the_job()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 31);
        image.Arm(failWrite: n => n == 1);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        var end = await _f.WaitEndAsync("job0");

        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        Assert.Equal("Input/output error", end.Str("error"));
        var error = Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR"));
        Assert.Equal("job0", error.Str("id"));
        Assert.Equal("write", error.Str("operation"));
        Assert.Equal("report", error.Str("action"));
        Assert.Equal(["created", "running", "aborting", "concluded", "null"], await _f.StatusesAfterDismissAsync("job0"));
        Assert.Equal("Input/output error", job.GetInfo().Error);
        Assert.False(src.Busy);
    }

    [Fact]
    public async Task Report_on_a_source_read_error_names_the_read()
    {
        var (src, image) = await _f.CreateFaultyAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 32);
        image.Arm(failRead: n => n == 1);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("Input/output error", end.Str("error"));
        Assert.Equal("read", Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR")).Str("operation"));
    }

    [Fact]
    public async Task Ignore_retries_and_the_job_completes()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 33);
        image.Arm(failWrite: n => n == 1);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", OnTargetError = BlockdevOnError.Ignore });
        await _f.WaitReadyAsync("job0");
        Assert.Equal("ignore", Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR")).Str("action"));
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Stop_pauses_with_io_status_and_resume_retries()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 34);
        image.Arm(failWrite: n => n == 1);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", OnTargetError = BlockdevOnError.Stop });
        await _f.Events.WaitForStatusAsync("job0", "paused");
        Assert.Equal("stop", Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR")).Str("action"));
        var info = job.GetInfo();
        Assert.Equal("failed", info.IoStatus);
        Assert.True(info.Paused);
        Assert.True(info.Remaining > 0);
        Assert.True(job.UserPaused);

        await _f.Layer.ResumeJobAsync("job0");
        Assert.Equal(IoStatus.Ok, job.IoStatus);
        await _f.WaitReadyAsync("job0");
        Assert.Equal("ok", job.GetInfo().IoStatus);
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Enospc_stops_on_no_space_with_nospace_status()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 35);
        image.NoSpace = true;
        image.Arm(failWrite: n => n == 1);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", OnTargetError = BlockdevOnError.Enospc });
        await _f.Events.WaitForStatusAsync("job0", "paused");
        Assert.Equal("stop", Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR")).Str("action"));
        Assert.Equal(IoStatus.Nospace, job.IoStatus);
        await _f.Layer.CancelJobAsync("job0", force: true);
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("job0")).Name);
    }

    [Fact]
    public async Task Enospc_reports_other_errors()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 36);
        image.Arm(failWrite: n => n == 1);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", OnTargetError = BlockdevOnError.Enospc });
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("Input/output error", end.Str("error"));
        Assert.Equal("report", Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR")).Str("action"));
    }
}
