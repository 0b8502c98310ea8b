using System.Diagnostics;
using System.Net.Sockets;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>
/// A server tool (qemu-nbd, nbdkit) run for the length of a test on a Unix socket; stopped by
/// killing the process we started, by its id.
/// </summary>
internal sealed class BackgroundTool : IAsyncDisposable
{
    private readonly Process _process;
    private readonly Task<string> _stderr;

    private BackgroundTool(Process process, string socketPath)
    {
        _process = process;
        SocketPath = socketPath;
        _stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
    }

    public string SocketPath { get; }

    /// <summary>Starts the tool and waits (bounded) until its socket accepts connections.</summary>
    public static async Task<BackgroundTool> StartAsync(string tool, string socketPath, params string[] arguments)
    {
        var info = new ProcessStartInfo(InteropTools.Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        var process = await ToolLauncher.StartAsync(info);
        var started = new BackgroundTool(process, socketPath);
        // Polling for the socket to accept is the one bounded retry the tests allow themselves.
        for (var attempt = 0; attempt < 200; attempt++)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"{tool} exited with {process.ExitCode}: {await started._stderr}");
            if (File.Exists(socketPath))
            {
                using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await probe.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
                    // The listening socket comes first (qemu-nbd binds it before it opens its image
                    // and takes the image's locks); the greeting comes from the serving loop, so
                    // after it the image is open.
                    if (await ReadsGreetingAsync(probe))
                        return started;
                }
                catch (SocketException)
                {
                }
            }
            await Task.Delay(50);
        }
        await started.DisposeAsync();
        throw new TimeoutException($"{tool} did not start listening on {socketPath}");
    }

    private static async Task<bool> ReadsGreetingAsync(Socket probe)
    {
        var magic = new byte[8];
        using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var read = 0;
        while (read < magic.Length)
        {
            var n = await probe.ReceiveAsync(magic.AsMemory(read), SocketFlags.None, bound.Token);
            if (n == 0)
                return false;
            read += n;
        }
        return "NBDMAGIC"u8.SequenceEqual(magic);
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
