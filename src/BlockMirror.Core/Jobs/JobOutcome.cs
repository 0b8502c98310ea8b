namespace BlockMirror.Core.Jobs;

/// <summary>
/// How a concluded job ended. QEMU leaves this to be inferred from which event came and whether it
/// carried an error; a history of finished jobs needs it stated, because a soft cancel ends with
/// BLOCK_JOB_COMPLETED and no error, and a force cancel with an error ("Operation canceled").
/// </summary>
public enum JobOutcome
{
    /// <summary>The job did its work to the end (a mirror: completed and pivoted).</summary>
    Completed,

    /// <summary>A user cancel ended it (see <see cref="JobCancelMode"/> for which kind).</summary>
    Cancelled,

    /// <summary>An error ended it (an I/O error, a failed graph change, the service stopping).</summary>
    Failed,
}
