using System.Diagnostics;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// A fact that checks images with QEMU's <c>qemu-img</c>: skipped, naming the package, where it is
/// not installed, unless BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), when it runs and fails on the missing tool.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Api.Tests")]
public sealed class QemuImgFactAttribute : FactAttribute
{
    public QemuImgFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") != "1" && Find() is null)
            Skip = "needs qemu-img (package qemu-utils); BLOCKMIRROR_REQUIRE_INTEROP=1 turns this skip into a failure";
    }

    /// <summary>Runs qemu-img; returns its exit code and what it printed.</summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo(Find() ?? "qemu-img") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments)
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120));
        return (process.ExitCode, await stdout + await stderr);
    }

    private static string? Find() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, "qemu-img")).FirstOrDefault(File.Exists);
}
