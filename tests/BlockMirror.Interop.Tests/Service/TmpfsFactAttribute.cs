using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// A fact that mounts a small tmpfs (a real file system that runs out of space): skipped, saying why,
/// where this process may not mount (not root, or a container without CAP_SYS_ADMIN). Decided once,
/// at discovery, by mounting and unmounting a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Interop.Tests")]
public sealed class TmpfsFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(ProbeMount);

    public TmpfsFactAttribute()
    {
        if (Refusal.Value is { } reason)
            Skip = "needs to mount a tmpfs: " + reason;
    }

    private static string? ProbeMount()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (Environment.UserName != "root")
            return "not running as root";
        var dir = Directory.CreateTempSubdirectory("blockmirror-mount-probe-").FullName;
        try
        {
            var error = Run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir);
            if (error is not null)
                return error;
            return Run("umount", dir);
        }
        finally
        {
            Directory.Delete(dir);
        }
    }

    private static string? Run(string tool, params string[] arguments)
    {
        try
        {
            // Discovery is synchronous; the probe is two short tool runs.
            var result = InteropTools.RunAsync(tool, arguments, TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
            return result.ExitCode == 0 ? null : $"{tool} exited with {result.ExitCode}: {result.Stderr.Trim()}";
        }
        catch (InvalidOperationException e)
        {
            return e.Message; // the tool is not installed
        }
    }
}
