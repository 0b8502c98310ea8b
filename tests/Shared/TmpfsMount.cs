using System.Diagnostics;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// A small tmpfs mounted on a folder: a real file system that runs out of space (ENOSPC after a
/// short write). Disposing unmounts it lazily, so a process that still holds a file open does not
/// keep it busy.
/// </summary>
public sealed class TmpfsMount : IAsyncDisposable
{
    private TmpfsMount(string path) => Path = path;

    public string Path { get; }

    /// <param name="type">
    /// The file system: tmpfs, or ramfs for one that refuses O_DIRECT (tmpfs takes it since Linux 6.6);
    /// ramfs ignores the size and never runs out of space.
    /// </param>
    public static async Task<TmpfsMount> MountAsync(string path, string size, string type = "tmpfs")
    {
        Directory.CreateDirectory(path);
        if (await RunAsync("mount", "-t", type, "-o", $"size={size}", type, path) is { } error)
            throw new InvalidOperationException(error);
        return new TmpfsMount(path);
    }

    public async ValueTask DisposeAsync() => await RunAsync("umount", "-l", Path);

    /// <summary>Why this process cannot mount a tmpfs (not root, no CAP_SYS_ADMIN, no mount), or null when it can.</summary>
    public static string? Refusal()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (Environment.UserName != "root")
            return "not running as root";
        var dir = Directory.CreateTempSubdirectory("blockmirror-mount-probe-").FullName;
        try
        {
            // Discovery is synchronous; the probe is two short tool runs.
            return RunAsync("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).GetAwaiter().GetResult()
                ?? RunAsync("umount", dir).GetAwaiter().GetResult();
        }
        finally
        {
            Directory.Delete(dir);
        }
    }

    /// <summary>Runs a tool; null when it exited with 0, else why not.</summary>
    private static async Task<string?> RunAsync(string tool, params string[] arguments)
    {
        var info = new ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        try
        {
            using var process = Process.Start(info)!;
            var stderr = process.StandardError.ReadToEndAsync();
            await process.StandardOutput.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            return process.ExitCode == 0 ? null : $"{tool} exited with {process.ExitCode}: {(await stderr).Trim()}";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"{tool}: {e.Message}"; // not installed
        }
    }
}
