using System.Diagnostics;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// A fact that mounts a small tmpfs (a real file system that runs out of space): skipped, saying why,
/// where this process may not mount (not root, or a container without CAP_SYS_ADMIN). Decided once,
/// by mounting and unmounting a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class TmpfsFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(Probe);

    public TmpfsFactAttribute()
    {
        if (Refusal.Value is { } reason)
            Skip = "needs to mount a tmpfs: " + reason;
    }

    /// <summary>Mounts a tmpfs of <paramref name="size"/> (mount's syntax, e.g. "4m") on <paramref name="directory"/>.</summary>
    public static void Mount(string directory, string size)
    {
        if (Run("mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", directory) is { } error)
            throw new InvalidOperationException(error);
    }

    /// <summary>Unmounts <paramref name="directory"/> (lazily: a process that still holds a file there lets go later).</summary>
    public static void Unmount(string directory) => Run("umount", "-l", directory);

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (Environment.UserName != "root")
            return "not running as root";
        var dir = Directory.CreateTempSubdirectory("blockmirror-mount-probe-").FullName;
        try
        {
            return Run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir) ?? Run("umount", dir);
        }
        finally
        {
            Directory.Delete(dir);
        }
    }

    private static string? Run(string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments)
            start.ArgumentList.Add(a);
        try
        {
            using var process = Process.Start(start)!;
            var stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return process.ExitCode == 0 ? null : $"{tool} exited with {process.ExitCode}: {stderr.Trim()}";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return e.Message; // not installed
        }
    }
}
