using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Options;

/// <summary>How jobs behave (<c>Jobs</c> section).</summary>
public sealed class JobsOptions
{
    public const string Section = "Jobs";

    /// <summary>
    /// Copy mode auto: how long the remaining bytes of a mirror may fail to shrink while writes go on
    /// before it switches itself to write-blocking. Shorter switches sooner (and more readily on a
    /// copy that only stutters); longer lets a background copy that barely keeps up try for longer.
    /// </summary>
    public TimeSpan AutoCopyModeWindow { get; set; } = MirrorJob.DefaultAutoCopyModeWindow;
}
