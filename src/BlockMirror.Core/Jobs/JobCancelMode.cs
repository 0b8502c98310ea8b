namespace BlockMirror.Core.Jobs;

/// <summary>Which cancel ended a job whose outcome is <see cref="JobOutcome.Cancelled"/>.</summary>
public enum JobCancelMode
{
    /// <summary>A cancel in ready: the job converged and finished without a pivot, a point-in-time copy.</summary>
    Soft,

    /// <summary>An abort: in-flight work abandoned, the target left partial.</summary>
    Force,
}
