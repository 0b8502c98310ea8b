using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// A loop device on a sparse file (<c>losetup -f --show</c>), detached on dispose whatever the test
/// did: a test that failed must not leave the machine a device short.
/// </summary>
internal sealed class LoopDevice : IAsyncDisposable
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

    /// <summary>Makes a sparse file of <paramref name="size"/> bytes in <paramref name="dir"/> and attaches it.</summary>
    public static async Task<LoopDevice> AttachAsync(string dir, long size, string name = "loop")
    {
        var file = Path.Combine(dir, $"{name}-{Guid.NewGuid():N}.img");
        await using (var f = new FileStream(file, FileMode.CreateNew))
            f.SetLength(size);
        var result = await InteropTools.RunAsync("losetup", ["-f", "--show", file], TimeSpan.FromSeconds(60));
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"losetup -f --show failed: {result.Stderr.Trim()}");
        return new LoopDevice(result.Stdout.Trim(), file);
    }

    /// <summary>Writes the backing file's page cache and the device's back, so the file shows what went through the device.</summary>
    public Task FlushAsync() => InteropTools.RunOkAsync("blockdev", "--flushbufs", Device);

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _detached, 1) != 0)
            return;
        // Still open (a service that failed to stop)? The kernel detaches on the last close (autoclear).
        var result = await InteropTools.RunAsync("losetup", ["-d", Device], TimeSpan.FromSeconds(60));
        if (result.ExitCode != 0)
            await Console.Error.WriteLineAsync($"losetup -d {Device} failed: {result.Stderr.Trim()}");
        try
        {
            File.Delete(BackingFile);
        }
        catch (IOException)
        {
        }
    }
}
