namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// A fact that mounts a small tmpfs: skipped, saying why, where this process may not mount (not
/// root, or a container without CAP_SYS_ADMIN). Decided once, at discovery, by mounting and
/// unmounting a probe. CI runs as root, so it runs there.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Api.Tests")]
public sealed class TmpfsFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(TmpfsMount.Refusal);

    public TmpfsFactAttribute()
    {
        if (Refusal.Value is { } reason)
            Skip = "needs to mount a tmpfs: " + reason;
    }
}
