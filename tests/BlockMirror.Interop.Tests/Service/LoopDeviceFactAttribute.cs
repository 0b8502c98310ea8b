using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// A fact that attaches loop devices (<c>losetup</c>, util-linux): skipped, saying why, where this
/// process cannot (not root, no loop driver, a container without /dev/loop-control) — unless
/// BLOCKMIRROR_REQUIRE_INTEROP=1, when the test runs and fails on what is missing. Decided once, at
/// discovery, by attaching and detaching a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Interop.Tests")]
public sealed class LoopDeviceFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(LoopDevice.Refusal);

    /// <param name="tools">The QEMU / libnbd tools the test drives besides losetup (skipped like <see cref="Nbd.NbdInteropFactAttribute"/> when missing).</param>
    public LoopDeviceFactAttribute(params string[] tools)
    {
        if (InteropTools.Required)
            return;
        var missing = tools.Where(t => InteropTools.Find(t) is null).ToList();
        if (Refusal.Value is { } reason)
            Skip = "needs loop devices: " + reason + " (BLOCKMIRROR_REQUIRE_INTEROP=1 makes this a failure)";
        else if (missing.Count > 0)
            Skip = InteropTools.MissingMessage(missing);
    }
}
