using BlockMirror.Tests.Shared;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// A fact that attaches loop devices: skipped, saying why, where this process cannot (not root, no
/// losetup, no loop driver) — unless BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), when it runs and fails on
/// what is missing. Decided once, at discovery, by attaching and detaching a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Core.Tests")]
public sealed class LoopDeviceFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(LoopDevice.Refusal);

    public LoopDeviceFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") != "1" && Refusal.Value is { } reason)
            Skip = "needs loop devices: " + reason + " (BLOCKMIRROR_REQUIRE_INTEROP=1 makes this a failure)";
    }
}
