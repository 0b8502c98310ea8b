using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// The service as a host runs it, in a network namespace (<c>ip netns exec NS dotnet
/// BlockMirror.Api.dll</c>, from the test's output folder), with its own database and image root in
/// <see cref="DataDir"/>. Its REST API listens on a unix socket in that folder (reachable from the
/// test's namespace, since sockets in the file system are not per namespace), with an API key as
/// every non-loopback address needs. Stopped by killing the process started, by its id.
/// </summary>
internal sealed class NamespacedService : IAsyncDisposable
{
    public const string ApiKey = "two-hosts-test-key";

    private readonly Process _process;
    private readonly StringBuilder _log = new();

    private readonly string _netns;
    private readonly string[] _settings;

    private NamespacedService(Process process, string netns, string dataDir, string[] settings, HttpClient http)
    {
        _process = process;
        _netns = netns;
        _settings = settings;
        DataDir = dataDir;
        Http = http;
    }

    public string DataDir { get; }

    public string ImageRoot => Path.Combine(DataDir, "images");

    public HttpClient Http { get; }

    public string Log
    {
        get
        {
            lock (_log)
                return _log.ToString();
        }
    }

    public static async Task<NamespacedService> StartAsync(string netns, string dataDir, params string[] settings)
    {
        Directory.CreateDirectory(Path.Combine(dataDir, "images"));
        var socket = Path.Combine(dataDir, "api.sock");
        var info = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "netns", "exec", netns, "dotnet", Path.Combine(AppContext.BaseDirectory, "BlockMirror.Api.dll"),
            "--Urls", $"http://unix:{socket}", "--Auth:ApiKeys:0", ApiKey,
            "--Storage:Root", Path.Combine(dataDir, "images"),
            "--ConnectionStrings:BlockMirror", $"Data Source={Path.Combine(dataDir, "blockmirror.db")}" }.Concat(settings))
        {
            info.ArgumentList.Add(a);
        }
        var process = Process.Start(info)!;
        var http = new HttpClient(new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct);
                return new NetworkStream(s, ownsSocket: true);
            },
        })
        { BaseAddress = new Uri("http://localhost/"), Timeout = TimeSpan.FromSeconds(60) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
        var service = new NamespacedService(process, netns, dataDir, settings, http);
        process.OutputDataReceived += (_, e) => service.Append(e.Data);
        process.ErrorDataReceived += (_, e) => service.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        // Polling /healthz until the host answers is the one bounded retry here.
        for (var attempt = 0; attempt < 600; attempt++)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"the service in {netns} exited with {process.ExitCode}: {service.Log}");
            try
            {
                using var r = await http.GetAsync("/healthz");
                if (r.IsSuccessStatusCode)
                    return service;
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(100);
        }
        await service.DisposeAsync();
        throw new TimeoutException($"the service in {netns} did not become healthy: {service.Log}");
    }

    /// <summary>
    /// kill -9 of the host's service (SIGKILL, by the id of the process started): no shutdown
    /// code runs, its sockets are closed by the kernel, its files keep what reached the kernel.
    /// </summary>
    public async Task KillAsync()
    {
        _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync();
    }

    /// <summary>The same host started again after <see cref="KillAsync"/>: same namespace, database, image root and settings.</summary>
    public Task<NamespacedService> RestartAsync()
    {
        if (!_process.HasExited)
            throw new InvalidOperationException("the service still runs: kill it first");
        // A killed server leaves its unix socket's file behind, and Kestrel will not bind over it.
        File.Delete(Path.Combine(DataDir, "api.sock"));
        return StartAsync(_netns, DataDir, _settings);
    }

    private void Append(string? line)
    {
        if (line is null)
            return;
        lock (_log)
            _log.AppendLine(line);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
