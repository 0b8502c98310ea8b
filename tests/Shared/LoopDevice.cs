using System.Diagnostics;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// A loop device on a sparse file (<c>losetup -f --show</c>), detached on dispose whatever the test
/// did: a test that failed must not leave the machine a device short. Linked into every test project
/// that attaches one (Interop's block-device tests, Api's crash harness).
/// </summary>
public sealed class LoopDevice : IAsyncDisposable
{
    private int _detached;

    private LoopDevice(string device, string backingFile)
    {
        Device = device;
        BackingFile = backingFile;
    }

    /// <summary>/dev/loopN.</summary>
    public string Device { get; }

    /// <summary>The sparse file the device reads and writes.</summary>
    public string BackingFile { get; }

    /// <summary>
    /// Makes a sparse file of <paramref name="size"/> bytes in <paramref name="dir"/> and attaches it,
    /// with <paramref name="sectorSize"/> as the device's logical block size when given (a 4K-native disk).
    /// </summary>
    /// <exception cref="InvalidOperationException">losetup is missing or refused (its message).</exception>
    public static async Task<LoopDevice> AttachAsync(string dir, long size, string name = "loop", int? sectorSize = null)
    {
        var file = Path.Combine(dir, $"{name}-{Guid.NewGuid():N}.img");
        await using (var f = new FileStream(file, FileMode.CreateNew))
            f.SetLength(size);
        var (exit, stdout, stderr) = sectorSize is { } sector
            ? await RunAsync("losetup", "-f", "--show", "--sector-size", sector.ToString(System.Globalization.CultureInfo.InvariantCulture), file)
            : await RunAsync("losetup", "-f", "--show", file);
        if (exit != 0)
        {
            File.Delete(file);
            throw new InvalidOperationException($"losetup -f --show failed: {stderr.Trim()}");
        }
        return new LoopDevice(stdout.Trim(), file);
    }

    /// <summary>Why this process cannot attach a loop device (not root, no losetup, no loop driver), or null when it can.</summary>
    public static string? Refusal()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (Environment.UserName != "root")
            return "not running as root";
        var dir = Directory.CreateTempSubdirectory("blockmirror-loop-probe-").FullName;
        try
        {
            // Discovery is synchronous; the probe is two short tool runs.
            var loop = AttachAsync(dir, 1 << 20).GetAwaiter().GetResult();
            loop.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return null;
        }
        catch (InvalidOperationException e)
        {
            return e.Message;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Writes the device's page cache back (<c>blockdev --flushbufs</c>), so its backing file shows what went through it.</summary>
    public async Task FlushAsync()
    {
        var (exit, _, stderr) = await RunAsync("blockdev", "--flushbufs", Device);
        if (exit != 0)
            throw new InvalidOperationException($"blockdev --flushbufs {Device} failed: {stderr.Trim()}");
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _detached, 1) != 0)
            return;
        // Still open (a service that failed to stop)? The kernel detaches on the last close (autoclear).
        var (exit, _, stderr) = await RunAsync("losetup", "-d", Device);
        if (exit != 0)
            await Console.Error.WriteLineAsync($"losetup -d {Device} failed: {stderr.Trim()}");
        try
        {
            File.Delete(BackingFile);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Runs a util-linux tool (PATH, then /usr/sbin and /sbin, which a non-login PATH may lack).</summary>
    private static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string tool, params string[] arguments)
    {
        var path = new[] { "/usr/sbin", "/sbin" }.Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists) ?? tool;
        var info = new ProcessStartInfo(path) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{tool} is not installed (Debian: mount, util-linux): {e.Message}", e);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
            return (process.ExitCode, await stdout, await stderr);
        }
    }
}
