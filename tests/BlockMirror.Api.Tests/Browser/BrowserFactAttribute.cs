namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// A fact that drives Chromium: skipped with a message when the browser is missing, unless
/// BLOCKMIRROR_REQUIRE_BROWSER=1, when it runs and fails on the missing browser.
/// (xunit 2 has no dynamic skip; the attribute decides at discovery.)
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Api.Tests")]
public sealed class BrowserFactAttribute : FactAttribute
{
    public BrowserFactAttribute()
    {
        if (!BrowserEnvironment.Available && !BrowserEnvironment.Required)
            Skip = BrowserEnvironment.MissingMessage;
    }
}
