using BlockMirror.Core.Jobs;
using BlockMirror.Core.State;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Jobs across a restart of the service (DESIGN.md "State", API.md history).</summary>
public sealed class JobRecoveryTests : IAsyncLifetime
{
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private static JobRecord Record(string id, string status, bool autoDismiss, string? bitmap = null, bool dismissed = false)
    {
        var now = DateTime.UtcNow;
        var info = new JobInfo(id, "mirror", status, "src", "dst", "full", bitmap, bitmap is null ? null : "always", "background",
            65536, 16 << 20, 0, 100, 200, 100, 100, 0, 0, null, false, false, false, "ok", null, true, autoDismiss, now, now, null);
        return new JobRecord(Guid.NewGuid(), id, "mirror", status, "src", "dst", null, dismissed, info, now, now, null);
    }

    [Fact]
    public async Task Interrupted_jobs_conclude_with_an_error_saying_so()
    {
        var src = await _f.CreateRawAsync("src", 1 << 20);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "b0", 65536, persistent: true, disabled: true));
        var running = Record("j1", "running", autoDismiss: false, bitmap: "b0");
        var ready = Record("j2", "ready", autoDismiss: true);
        var concluded = Record("j3", "concluded", autoDismiss: false);
        var old = Record("j4", "concluded", autoDismiss: true, dismissed: true);
        foreach (var r in new[] { running, ready, concluded, old })
            _f.JobStore.Seed(r);

        await _f.Layer.RecoverJobsAsync();

        var j1 = _f.Layer.GetJob("j1");
        Assert.Equal("concluded", j1.GetInfo().Status);
        Assert.Equal("The service stopped while the job was running", j1.GetInfo().Error);
        Assert.Equal(JobStatus.Concluded, j1.Status);
        Assert.Equal("The service stopped while the job was running", _f.JobStore.Latest(running.Uid)!.Error);
        Assert.Equal("concluded", _f.JobStore.Latest(running.Uid)!.Status);
        // Its working bitmap records again, so a new mirror with it resumes.
        Assert.True(src.GetBitmap("b0").Recording);

        // auto-dismiss: it would have left the list when it concluded.
        Assert.Null(_f.Layer.FindJob("j2"));
        Assert.Equal("The service stopped while the job was ready", _f.Layer.GetJob("j2", includeDismissed: true).Error);
        Assert.Same(_f.Layer.GetJob("j3"), _f.Layer.FindJob("j3"));
        Assert.Null(_f.Layer.GetJob("j3").Error);
        Assert.Null(_f.Layer.FindJob("j4"));
        Assert.NotNull(_f.Layer.FindJob("j4", includeDismissed: true));

        // A concluded job holds its id until dismissed.
        await _f.CreateRawAsync("dst", 1 << 20);
        var taken = await Assert.ThrowsAsync<BlockException>(() => _f.StartAsync(new MirrorOptions { Id = "j1", Device = "src", Target = "dst" }));
        Assert.Equal("job-exists", taken.Code);
        await _f.Layer.DismissJobAsync("j1");
        Assert.Null(_f.Layer.FindJob("j1"));
        await _f.Layer.FlushJobSavesAsync();
        Assert.True(_f.JobStore.Latest(running.Uid)!.Dismissed);
    }

    [Fact]
    public async Task Shutdown_stops_running_jobs_with_an_error()
    {
        var src = await _f.CreateRawAsync("src", 8 << 20);
        await _f.CreateRawAsync("dst", 8 << 20);
        await MirrorFixture.FillWithHolesAsync(src, seed: 51);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Speed = 1, BufSize = 1 << 20, AutoDismiss = false });
        await _f.Events.WaitForStatusAsync("job0", "running");
        await _f.Layer.ShutdownJobsAsync();
        Assert.Equal(JobStatus.Concluded, job.Status);
        Assert.Equal("The service stopped while the job was running", job.Error);
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        Assert.False(src.Busy);
        Assert.Equal("concluded", _f.JobStore.Latest(job.Uid)!.Status);
    }
}
