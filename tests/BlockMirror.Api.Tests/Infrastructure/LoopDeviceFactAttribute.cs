using BlockMirror.Tests.Shared;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// A fact that attaches loop devices: skipped, saying why, where this process cannot (not root, no
/// losetup, no loop driver) — unless BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), when it runs and fails on
/// what is missing. Decided once, at discovery, by attaching and detaching a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Api.Tests")]
public sealed class LoopDeviceFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(LoopDevice.Refusal);

    /// <param name="browser">The test drives Chromium too: skipped like a <see cref="Browser.BrowserFactAttribute"/> test where it is missing.</param>
    public LoopDeviceFactAttribute(bool browser = false)
    {
        if (Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") != "1" && Refusal.Value is { } reason)
            Skip = "needs loop devices: " + reason + " (BLOCKMIRROR_REQUIRE_INTEROP=1 makes this a failure)";
        else if (browser && !Browser.BrowserEnvironment.Available && !Browser.BrowserEnvironment.Required)
            Skip = Browser.BrowserEnvironment.MissingMessage;
    }
}
