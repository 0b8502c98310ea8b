using System.Runtime.CompilerServices;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>Where the browser is, whether it must be there, and where screenshots go.</summary>
public static class BrowserEnvironment
{
    /// <summary>Debian's chromium (apt): Playwright's own browser download is not available here.</summary>
    public static string ChromiumPath => Environment.GetEnvironmentVariable("CHROMIUM_PATH") is { Length: > 0 } p ? p : "/usr/bin/chromium";

    public static bool Available => File.Exists(ChromiumPath);

    /// <summary>CI sets BLOCKMIRROR_REQUIRE_BROWSER=1: there a missing browser fails the tests instead of skipping them.</summary>
    public static bool Required => Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_BROWSER") == "1";

    public static string MissingMessage =>
        $"Chromium not found at {ChromiumPath}: install Debian's 'chromium' package (apt-get install chromium) or set CHROMIUM_PATH; " +
        "BLOCKMIRROR_REQUIRE_BROWSER=1 turns this skip into a failure.";

    /// <summary>BLOCKMIRROR_SCREENSHOTS=1 writes the README's screenshots; off by default so test runs leave the tree clean.</summary>
    public static bool ScreenshotsEnabled => Environment.GetEnvironmentVariable("BLOCKMIRROR_SCREENSHOTS") == "1";

    /// <summary>docs/screenshots of the checkout this file was compiled from (the build output may live elsewhere).</summary>
    public static string ScreenshotDirectory => Path.Combine(RepositoryRoot(), "docs", "screenshots");

    private static string RepositoryRoot([CallerFilePath] string sourceFile = "")
    {
        for (var dir = new DirectoryInfo(Path.GetDirectoryName(sourceFile)!); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "BlockMirror.Api.sln")))
                return dir.FullName;
        }
        throw new DirectoryNotFoundException($"No BlockMirror.Api.sln above {sourceFile}");
    }
}
