using BlockMirror.Core.State;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// A job of an earlier run of the service, as the store recorded it: concluded (or dismissed),
/// never running again. It is listed, queried and dismissed like any job.
/// </summary>
public sealed class RestoredJob : Job
{
    private readonly JobRecord _record;

    internal RestoredJob(IJobHost host, JobRecord record)
        : base(host, record.Id, record.Device, record.Snapshot.AutoFinalize, record.Snapshot.AutoDismiss, record.Snapshot.Speed, record.Uid, record.CreatedAt)
    {
        _record = record;
        // Restored records are concluded (RecoverJobsAsync concludes the others first).
        var (outcome, cancelMode) = RecordedOutcome(record) ?? (JobOutcome.Failed, null);
        RestoreConcluded(record.Error, record.UpdatedAt, record.FinishedAt, record.Dismissed, outcome, cancelMode, record.Snapshot.ReadyAt);
    }

    public override string Type => _record.Type;

    public override string? Target => _record.Target;

    public override JobInfo GetInfo() => _record.Snapshot with
    {
        Status = VisibleStatus(),
        Error = Error,
        Ready = false,
        Paused = false,
        CopyRate = 0,
        DirtyRate = 0,
        EtaSeconds = null,
        UpdatedAt = UpdatedAt,
        FinishedAt = FinishedAt,
        Outcome = Outcome is { } outcome ? JobNames.Of(outcome) : null,
        CancelMode = CancelMode is { } mode ? JobNames.Of(mode) : null,
    };

    /// <summary>
    /// The outcome a record states, null while its job had not concluded. A record stored before
    /// outcomes were recorded (or by the recovery of a job the stop cut off) tells it by its error
    /// alone: every force cancel ends with ECANCELED's sentence, any other error is a failure, no
    /// error a completion (a soft cancel cannot be told apart from one there).
    /// </summary>
    public static (JobOutcome Outcome, JobCancelMode? CancelMode)? RecordedOutcome(JobRecord record)
    {
        if (JobNames.ParseStatus(record.Status) != JobStatus.Concluded)
            return null;
        var snapshot = record.Snapshot;
        if (snapshot.Outcome is { } text && ParseOutcome(text) is { } recorded)
            return (recorded, recorded == JobOutcome.Cancelled ? ParseCancelMode(snapshot.CancelMode) : null);
        return record.Error switch
        {
            null => (JobOutcome.Completed, null),
            CanceledError => (JobOutcome.Cancelled, JobCancelMode.Force),
            _ => (JobOutcome.Failed, null),
        };
    }

    private static JobOutcome? ParseOutcome(string text) =>
        Enum.GetValues<JobOutcome>().Select(o => (JobOutcome?)o).FirstOrDefault(o => JobNames.Of(o!.Value) == text);

    private static JobCancelMode ParseCancelMode(string? text) => text == JobNames.Of(JobCancelMode.Soft) ? JobCancelMode.Soft : JobCancelMode.Force;

    protected override Task RunAsync() => throw new InvalidOperationException("A restored job does not run");

    protected override (long Len, long Offset) EventProgress() => (_record.Snapshot.TotalProgress, _record.Snapshot.CurrentProgress);
}
