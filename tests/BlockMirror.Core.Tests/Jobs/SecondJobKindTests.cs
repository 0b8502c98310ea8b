using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A job kind other than mirror, written against <see cref="IJobHost"/> alone: the registry lists
/// it, drives its lifecycle, applies the generic verbs and stores its record without knowing it,
/// and asks it (not its type) which bitmaps it works from.
/// </summary>
public sealed class SecondJobKindTests : IAsyncLifetime
{
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task A_new_job_kind_runs_concludes_and_is_dismissed_through_the_registry()
    {
        var node = await _f.CreateRawAsync("disk0", 1 << 20);
        var bitmap = await _f.Layer.BitmapActionAsync(new BlockMirror.Core.Transactions.BitmapAddAction("disk0", "b0", null, persistent: false, disabled: false));
        var job = new CountingJob(_f.Layer.JobHost, "count0", node.Name, bitmap);
        await _f.Layer.ControlAsync(() =>
        {
            _f.Layer.JobHost.RegisterControlLocked(job);
            job.CreatedControlLocked();
            job.StartControlLocked();
            return Task.CompletedTask;
        });
        await job.Concluded.WaitAsync(RecordingEventSink.Timeout);

        Assert.Equal(JobOutcome.Completed, job.Outcome);
        Assert.Same(job, _f.Layer.FindJob("count0"));
        Assert.Contains(_f.Events.Events, e => e.Name == "BLOCK_JOB_COMPLETED");
        // What the kind declares it holds counts in the layer's budget.
        Assert.Equal(4096, _f.Layer.BitmapMemoryInUse - bitmap.MemoryBytes);

        await _f.Layer.DismissJobAsync("count0");
        Assert.Null(_f.Layer.FindJob("count0"));
        Assert.Same(job, _f.Layer.FindJob("count0", includeDismissed: true));
        await _f.Layer.FlushJobSavesAsync();
        Assert.Equal("counting", _f.JobStore.Latest(job.Uid)!.Type);
    }

    /// <summary>A job that finishes at once, declaring 4 KiB of private bitmap memory while it is listed.</summary>
    private sealed class CountingJob(IJobHost host, string id, string device, DirtyBitmap watched)
        : Job(host, id, device, autoFinalize: true, autoDismiss: false, speed: 0)
    {
        public override string Type => "counting";

        public override long PrivateBitmapBytes => 4096;

        public override JobInfo GetInfo() => new(
            Id, Type, VisibleStatus(), Device, null, null, watched.Name, null, null,
            watched.Granularity, 0, Speed, 1, 1, 0, 0, 0, 0, null, false, Paused, false, JobNames.Of(IoStatus), Error,
            AutoFinalize, AutoDismiss, CreatedAt, UpdatedAt, FinishedAt);

        protected override Task RunAsync() => Task.CompletedTask;

        protected override (long Len, long Offset) EventProgress() => (1, 1);
    }
}
