namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>
/// A fact that needs external tools: skipped, naming the Debian packages, when one is missing —
/// unless BLOCKMIRROR_REQUIRE_INTEROP=1, when the test runs and fails on the missing tool.
/// (xunit 2 has no dynamic skip; the attribute decides at discovery.)
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Interop.Tests")]
public sealed class NbdInteropFactAttribute : FactAttribute
{
    public NbdInteropFactAttribute(params string[] tools)
    {
        var missing = tools.Where(t => InteropTools.Find(t) is null).ToList();
        if (missing.Count > 0 && !InteropTools.Required)
            Skip = InteropTools.MissingMessage(missing);
    }
}
