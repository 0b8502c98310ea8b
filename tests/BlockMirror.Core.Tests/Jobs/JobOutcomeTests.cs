using BlockMirror.Core.Jobs;
using BlockMirror.Core.State;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// How a job ended, stated rather than inferred from its events (issue 12 item 4): an I/O error
/// is a failure, the readiness time is kept, the record saved says it, and records stored before
/// outcomes existed (or recovered after a stop) are read by their error as QEMU's job_update_rc sets it.
/// </summary>
public sealed class JobOutcomeTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task An_io_error_with_policy_report_is_a_failure_and_the_saved_record_says_so()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (_, image) = await _f.CreateFaultyAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 41);
        image.Arm(failWrite: n => n == 1);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", AutoDismiss = false });
        await _f.WaitEndAsync("job0");

        Assert.Equal(JobOutcome.Failed, job.Outcome);
        Assert.Null(job.CancelMode);
        Assert.Null(job.ReadyAt);
        var info = job.GetInfo();
        Assert.Equal("failed", info.Outcome);
        Assert.Equal("Input/output error", info.Error);
        Assert.Equal(0, info.CopyRate);
        Assert.Null(info.EtaSeconds);
        await _f.Layer.FlushJobSavesAsync();
        Assert.Equal("failed", _f.JobStore.Latest(job.Uid)!.Snapshot.Outcome);
    }

    [Fact]
    public async Task Ready_time_and_outcome_follow_the_verbs()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 42);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", AutoDismiss = false });
        Assert.Null(job.Outcome);
        await _f.WaitReadyAsync("job0");
        var readyAt = job.ReadyAt;
        Assert.NotNull(readyAt);
        Assert.True(readyAt >= job.CreatedAt);
        await _f.Layer.CompleteJobAsync("job0");
        await _f.WaitEndAsync("job0");
        Assert.Equal(JobOutcome.Completed, job.Outcome);
        Assert.Equal(readyAt, job.ReadyAt);
        Assert.True(job.FinishedAt >= readyAt);
    }

    [Theory]
    [InlineData("concluded", null, "completed", null)]
    [InlineData("concluded", Job.CanceledError, "cancelled", "force")]
    [InlineData("concluded", "Input/output error", "failed", null)]
    [InlineData("concluded", "The service stopped while the job was running", "failed", null)]
    [InlineData("running", null, null, null)]
    public void A_record_without_an_outcome_is_read_by_its_error(string status, string? error, string? outcome, string? cancelMode)
    {
        var ended = RestoredJob.RecordedOutcome(Record(status, error, snapshotOutcome: null, snapshotCancelMode: null));
        Assert.Equal(outcome, ended is { } e ? JobNames.Of(e.Outcome) : null);
        Assert.Equal(cancelMode, ended?.CancelMode is { } m ? JobNames.Of(m) : null);
    }

    [Fact]
    public void A_recorded_outcome_wins_over_the_error()
    {
        // A soft cancel has no error: only the recorded outcome tells it from a completion.
        var ended = RestoredJob.RecordedOutcome(Record("concluded", null, "cancelled", "soft"));
        Assert.Equal((JobOutcome.Cancelled, JobCancelMode.Soft), ended);
    }

    private static JobRecord Record(string status, string? error, string? snapshotOutcome, string? snapshotCancelMode)
    {
        var now = DateTime.UtcNow;
        var info = new JobInfo("j", "mirror", status, "src", "dst", "full", null, null, "background",
            65536, 16 << 20, 0, 100, 100, 0, 100, 0, 0, null, false, false, false, "ok", error, true, false, now, now, now,
            snapshotOutcome, snapshotCancelMode);
        return new JobRecord(Guid.NewGuid(), "j", "mirror", status, "src", "dst", error, false, info, now, now, now);
    }
}
