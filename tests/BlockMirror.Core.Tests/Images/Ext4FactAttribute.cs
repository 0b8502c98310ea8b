namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// A fact about what ext4 does (its copy_file_range reads through the page cache): skipped, saying
/// why, where the temp directory lies on another file system — unless BLOCKMIRROR_REQUIRE_INTEROP=1
/// (CI), when it runs and fails there. Decided once, at discovery.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Core.Tests")]
public sealed class Ext4FactAttribute : FactAttribute
{
    private static readonly Lazy<bool> TempIsExt4 = new(() => PageCache.OnExt4(Path.GetTempPath()));

    public Ext4FactAttribute()
    {
        if (Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") != "1" && !TempIsExt4.Value)
            Skip = "needs the temp directory on ext4 (" + Path.GetTempPath() + " is not; BLOCKMIRROR_REQUIRE_INTEROP=1 makes this a failure)";
    }
}
