using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// The real service as a child process (<c>dotnet BlockMirror.Api.dll</c> from the test's own
/// output folder) on a data folder: REST on a free loopback port, NBD on a unix socket in the folder
/// (both overridable by <c>settings</c>, <c>--Key value</c> pairs that come last and so win).
/// <see cref="Kill"/> is kill -9, <see cref="TerminateAsync"/> SIGTERM; starting another one on the
/// same folder is the restart. <see cref="RunToExitAsync"/> runs one that is expected to refuse.
/// </summary>
internal sealed partial class ChildService : IAsyncDisposable
{
    private const int SIGTERM = 15;

    private readonly Process _process;
    private readonly Output _output;

    private ChildService(Process process, Output output, Uri baseAddress, string nbdSocket)
    {
        _process = process;
        _output = output;
        Http = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        NbdSocket = nbdSocket;
    }

    public HttpClient Http { get; }

    /// <summary>
    /// The writable export <paramref name="name"/> of <paramref name="node"/>: created by the first life
    /// that asks (<paramref name="exported"/> false), then served again by every restart on its own,
    /// a kill -9 included (exports are stored), which this asserts.
    /// </summary>
    public async Task<System.Text.Json.Nodes.JsonNode> ExportAsync(string name, string node, bool exported)
    {
        if (!exported)
            return await Http.PostJsonAsync("/api/v1/exports", new { name, node, writable = true }, HttpStatusCode.Created);
        var export = await Http.GetJsonAsync($"/api/v1/exports/{name}");
        Assert.True((bool)export["served"]!, $"export '{name}' is not served after the restart: {export.ToJsonString()}\n{Log}");
        Assert.Equal(node, (string?)export["node"]);
        return export;
    }

    public string NbdSocket { get; }

    public int Pid => _process.Id;

    /// <summary>Where the NBD server listens as the service logged it (<c>127.0.0.1:port</c>, <c>unix:/path</c>), or null before it said so.</summary>
    public string? NbdListening => _output.NbdListening;

    /// <summary>Set by <see cref="Kill"/>: from then on a failed request is the kill's doing, not the service's.</summary>
    public bool Killed { get; private set; }

    /// <summary>The child's stdout and stderr so far (for failure messages).</summary>
    public string Log => _output.All;

    /// <summary>The child's stderr so far.</summary>
    public string Stderr => _output.Stderr;

    public bool HasExited => _process.HasExited;

    public static async Task<ChildService> StartAsync(string dataDir, params string[] settings)
    {
        var (process, output, socket) = Launch(dataDir, settings);
        ChildService? child = null;
        try
        {
            var address = await output.Listening.Task.WaitAsync(TimeSpan.FromSeconds(90));
            child = new ChildService(process, output, address, socket);
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

    /// <summary>
    /// Starts a service that should refuse to start and waits for its exit. One that starts instead
    /// (listening and healthy) is killed -9 at once and reported with <see cref="ChildExit.ExitCode"/>
    /// null: the test fails on its exit code, after whatever that start did to the folder.
    /// </summary>
    public static async Task<ChildExit> RunToExitAsync(string dataDir, params string[] settings)
    {
        var (process, output, _) = Launch(dataDir, settings);
        using (process)
        {
            var exited = process.WaitForExitAsync();
            var started = output.Listening.Task.ContinueWith(async t =>
            {
                using var http = new HttpClient { BaseAddress = t.Result, Timeout = TimeSpan.FromSeconds(5) };
                while (!process.HasExited)
                {
                    try
                    {
                        using var r = await http.GetAsync("/healthz");
                        if (r.StatusCode == HttpStatusCode.OK)
                            return;
                    }
                    catch (HttpRequestException)
                    {
                    }
                    await Task.Delay(50);
                }
            }, TaskContinuationOptions.OnlyOnRanToCompletion).Unwrap();
            var first = await Task.WhenAny(exited, started).WaitAsync(TimeSpan.FromSeconds(90));
            if (first == exited || process.HasExited)
            {
                await exited;
                await output.Drained();
                return new ChildExit(process.ExitCode, output.Stdout, output.Stderr);
            }
            KillQuietly(process);
            await exited;
            await output.Drained();
            return new ChildExit(null, output.Stdout, output.Stderr);
        }
    }

    private static (Process Process, Output Output, string Socket) Launch(string dataDir, string[] settings)
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
            "--Logging:LogLevel:BlockMirror.Api.Infrastructure.NbdHost", "Information",
        }.Concat(settings))
            start.ArgumentList.Add(arg);
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        start.Environment["DOTNET_ENVIRONMENT"] = "Production";

        var output = new Output();
        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) => output.Add(e.Data, error: false);
        process.ErrorDataReceived += (_, e) => output.Add(e.Data, error: true);
        process.Exited += (_, _) => output.Listening.TrySetException(new InvalidOperationException($"The service exited before listening:\n{output.All}"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return (process, output, socket);
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

    /// <summary>
    /// SIGTERM (what systemd, docker stop and Ctrl+C's cousin send) and the wait for the exit; returns
    /// the exit code, or throws a TimeoutException (after a kill -9) when the stop takes longer than <paramref name="timeout"/>.
    /// </summary>
    public async Task<int> TerminateAsync(TimeSpan timeout)
    {
        Assert.Equal(0, kill(_process.Id, SIGTERM));
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            Kill();
            throw new TimeoutException($"The service did not stop within {timeout} after SIGTERM:\n{Log}");
        }
        await _output.Drained();
        return _process.ExitCode;
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
        if (!_process.HasExited)
            Kill();
        await _process.WaitForExitAsync();
        Http.Dispose();
        _process.Dispose();
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    [GeneratedRegex(@"Now listening on: (http://\S+)")]
    private static partial Regex ListeningLine();

    [GeneratedRegex(@"NBD server listening on (\S+)")]
    private static partial Regex NbdListeningLine();

    /// <summary>What the child printed, as it arrives.</summary>
    private sealed class Output
    {
        private readonly StringBuilder _all = new();
        private readonly StringBuilder _stdout = new();
        private readonly StringBuilder _stderr = new();
        private readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource<Uri> Listening { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public string? NbdListening { get; private set; }

        public string All => Read(_all);

        public string Stdout => Read(_stdout);

        public string Stderr => Read(_stderr);

        public void Add(string? line, bool error)
        {
            if (line is null)
            {
                (error ? _stderrClosed : _stdoutClosed).TrySetResult();
                return;
            }
            lock (_all)
            {
                _all.AppendLine(line);
                (error ? _stderr : _stdout).AppendLine(line);
            }
            if (error)
                return;
            if (ListeningLine().Match(line) is { Success: true } m)
                Listening.TrySetResult(new Uri(m.Groups[1].Value));
            if (NbdListeningLine().Match(line) is { Success: true } n)
                NbdListening = n.Groups[1].Value;
        }

        /// <summary>After the exit: both pipes read to their end, so nothing printed last is missing.</summary>
        public Task Drained() => Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task).WaitAsync(TimeSpan.FromSeconds(10));

        private string Read(StringBuilder builder)
        {
            lock (_all)
                return builder.ToString();
        }
    }
}
