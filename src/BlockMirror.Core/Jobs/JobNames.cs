namespace BlockMirror.Core.Jobs;

/// <summary>
/// The QEMU spellings of the job enums (lower-case, kebab-case), used in events, snapshots and
/// messages; and their parsing back (records loaded from the store).
/// </summary>
public static class JobNames
{
    public static string Of(JobStatus status) => status switch
    {
        JobStatus.Undefined => "undefined",
        JobStatus.Created => "created",
        JobStatus.Running => "running",
        JobStatus.Paused => "paused",
        JobStatus.Ready => "ready",
        JobStatus.Standby => "standby",
        JobStatus.Waiting => "waiting",
        JobStatus.Pending => "pending",
        JobStatus.Aborting => "aborting",
        JobStatus.Concluded => "concluded",
        _ => "null",
    };

    public static string Of(JobVerb verb) => verb switch
    {
        JobVerb.Cancel => "cancel",
        JobVerb.Pause => "pause",
        JobVerb.Resume => "resume",
        JobVerb.SetSpeed => "set-speed",
        JobVerb.Complete => "complete",
        JobVerb.Finalize => "finalize",
        JobVerb.Dismiss => "dismiss",
        _ => "change",
    };

    public static string Of(MirrorSyncMode sync) => sync switch
    {
        MirrorSyncMode.Full => "full",
        MirrorSyncMode.Top => "top",
        _ => "none",
    };

    public static string Of(MirrorCopyMode mode) => mode switch
    {
        MirrorCopyMode.WriteBlocking => "write-blocking",
        MirrorCopyMode.Auto => "auto",
        _ => "background",
    };

    public static string Of(BitmapMode mode) => mode switch
    {
        BitmapMode.Always => "always",
        BitmapMode.Never => "never",
        _ => "on-success",
    };

    public static string Of(IoStatus status) => status switch
    {
        IoStatus.Ok => "ok",
        IoStatus.Failed => "failed",
        _ => "nospace",
    };

    public static string Of(BlockdevOnError policy) => policy switch
    {
        BlockdevOnError.Report => "report",
        BlockdevOnError.Ignore => "ignore",
        BlockdevOnError.Stop => "stop",
        _ => "enospc",
    };

    public static string Of(JobOutcome outcome) => outcome switch
    {
        JobOutcome.Completed => "completed",
        JobOutcome.Cancelled => "cancelled",
        _ => "failed",
    };

    public static string Of(JobCancelMode mode) => mode == JobCancelMode.Soft ? "soft" : "force";

    /// <summary>Parses a status spelling; unknown text is <see cref="JobStatus.Undefined"/>.</summary>
    public static JobStatus ParseStatus(string? text)
    {
        foreach (var s in Enum.GetValues<JobStatus>())
        {
            if (Of(s) == text)
                return s;
        }
        return JobStatus.Undefined;
    }
}
