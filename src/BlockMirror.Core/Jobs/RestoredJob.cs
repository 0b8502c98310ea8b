using BlockMirror.Core.State;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// A job of an earlier run of the service, as the store recorded it: concluded (or dismissed),
/// never running again. It is listed, queried and dismissed like any job.
/// </summary>
public sealed class RestoredJob : Job
{
    private readonly JobRecord _record;

    internal RestoredJob(BlockLayer layer, JobRecord record)
        : base(layer, record.Id, record.Device, record.Snapshot.AutoFinalize, record.Snapshot.AutoDismiss, record.Snapshot.Speed, record.Uid, record.CreatedAt)
    {
        _record = record;
        RestoreConcluded(record.Error, record.UpdatedAt, record.FinishedAt, record.Dismissed);
    }

    public override string Type => _record.Type;

    public override string? Target => _record.Target;

    public override JobInfo GetInfo() => _record.Snapshot with
    {
        Status = VisibleStatus(),
        Error = Error,
        Ready = false,
        Paused = false,
        UpdatedAt = UpdatedAt,
        FinishedAt = FinishedAt,
    };

    protected override Task RunAsync() => throw new InvalidOperationException("A restored job does not run");

    protected override (long Len, long Offset) EventProgress() => (_record.Snapshot.TotalProgress, _record.Snapshot.CurrentProgress);
}
