using System.Diagnostics;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// A fact that makes files immutable (<c>chattr +i</c>: every write to them fails, through descriptors
/// already open too, as on a failing disk): skipped, saying why, where this process may not (not
/// root, no chattr, a temp file system without the attribute). Decided once, by a probe.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Core.Tests")]
public sealed class ChattrFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(Probe);

    public ChattrFactAttribute()
    {
        if (Refusal.Value is { } reason)
            Skip = "needs chattr +i: " + reason;
    }

    /// <summary>Sets or clears the immutable attribute of <paramref name="paths"/>.</summary>
    public static void SetImmutable(bool immutable, params string[] paths)
    {
        if (Run([immutable ? "+i" : "-i", .. paths]) is { } error)
            throw new InvalidOperationException(error);
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (Environment.UserName != "root")
            return "not running as root";
        var file = Path.GetTempFileName();
        try
        {
            return Run(["+i", file]) ?? Run(["-i", file]);
        }
        finally
        {
            Run(["-i", file]);
            File.Delete(file);
        }
    }

    private static string? Run(string[] arguments)
    {
        var start = new ProcessStartInfo("chattr") { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments)
            start.ArgumentList.Add(a);
        try
        {
            using var process = Process.Start(start)!;
            var stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return process.ExitCode == 0 ? null : $"chattr exited with {process.ExitCode}: {stderr.Trim()}";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return e.Message; // not installed
        }
    }
}
