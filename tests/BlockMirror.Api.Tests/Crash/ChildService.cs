using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// The real service as a child process (<c>dotnet BlockMirror.Api.dll</c> from the test's own
/// output folder) on a data folder: REST on a free loopback port, NBD on a unix socket in the folder.
/// <see cref="Kill"/> is kill -9; starting another one on the same folder is the restart.
/// </summary>
internal sealed partial class ChildService : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log;

    private ChildService(Process process, StringBuilder log, Uri baseAddress, string nbdSocket)
    {
        _process = process;
        _log = log;
        Http = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        NbdSocket = nbdSocket;
    }

    public HttpClient Http { get; }

    public string NbdSocket { get; }

    /// <summary>Set by <see cref="Kill"/>: from then on a failed request is the kill's doing, not the service's.</summary>
    public bool Killed { get; private set; }

    /// <summary>The child's stdout and stderr so far (for failure messages).</summary>
    public string Log
    {
        get
        {
            lock (_log)
                return _log.ToString();
        }
    }

    public static async Task<ChildService> StartAsync(string dataDir)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "BlockMirror.Api.dll");
        var socket = Path.Combine(dataDir, "nbd.sock");
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = dataDir,
        };
        foreach (var arg in new[]
        {
            dll,
            "--Urls", "http://127.0.0.1:0",
            "--Storage:Root", Path.Combine(dataDir, "images"),
            "--ConnectionStrings:BlockMirror", $"Data Source={Path.Combine(dataDir, "blockmirror.db")}",
            "--Nbd:Listen", "unix:" + socket,
            "--Logging:LogLevel:Default", "Warning",
            "--Logging:LogLevel:Microsoft.Hosting.Lifetime", "Information",
        })
            start.ArgumentList.Add(arg);
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        start.Environment["DOTNET_ENVIRONMENT"] = "Production";

        var log = new StringBuilder();
        var listening = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
                return;
            lock (log)
                log.AppendLine(e.Data);
            if (ListeningLine().Match(e.Data) is { Success: true } m)
                listening.TrySetResult(new Uri(m.Groups[1].Value));
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (log)
                    log.AppendLine(e.Data);
            }
        };
        process.Exited += (_, _) => listening.TrySetException(new InvalidOperationException($"The service exited before listening:\n{log}"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        ChildService? child = null;
        try
        {
            var address = await listening.Task.WaitAsync(TimeSpan.FromSeconds(90));
            child = new ChildService(process, log, address, socket);
            await child.WaitHealthyAsync();
            return child;
        }
        catch
        {
            if (child is not null)
                await child.DisposeAsync();
            else
                KillQuietly(process);
            throw;
        }
    }

    /// <summary>Polls /healthz (bounded): Kestrel listens before the hosted services finished loading.</summary>
    private async Task WaitHealthyAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            try
            {
                using var response = await Http.GetAsync("/healthz");
                if (response.StatusCode == HttpStatusCode.OK)
                    return;
            }
            catch (HttpRequestException)
            {
            }
            if (DateTime.UtcNow > deadline || _process.HasExited)
                throw new InvalidOperationException($"The service did not become healthy:\n{Log}");
            await Task.Delay(50);
        }
    }

    /// <summary>SIGKILL, now: no stop, no flush, no store.</summary>
    public void Kill()
    {
        Killed = true;
        KillQuietly(_process);
    }

    /// <summary>Waits until the process is gone after <see cref="Kill"/>; fails if nothing killed it in time.</summary>
    public async Task WaitForKillAsync(TimeSpan timeout)
    {
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"The kill point was never reached (killed: {Killed}):\n{Log}");
        }
        Assert.True(Killed, $"The service exited by itself:\n{Log}");
    }

    private static void KillQuietly(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: false);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
    }

    public async ValueTask DisposeAsync()
    {
        Kill();
        await _process.WaitForExitAsync();
        Http.Dispose();
        _process.Dispose();
    }

    [GeneratedRegex(@"Now listening on: (http://\S+)")]
    private static partial Regex ListeningLine();
}
