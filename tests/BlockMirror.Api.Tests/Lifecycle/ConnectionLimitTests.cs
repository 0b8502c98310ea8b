using System.Net;
using System.Net.Sockets;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Options;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests.Lifecycle;

/// <summary>
/// Idle connections cannot exhaust the process's descriptors (issue 10, case 13): both servers hold
/// at most their configured caps, which must fit RLIMIT_NOFILE minus a reserve for the data. Before,
/// ~24,000 idle connections to the REST port (no key needed) took the last descriptor and the runtime died.
/// </summary>
public sealed class ConnectionLimitTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-limits-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task Many_more_idle_connections_than_the_caps_hold_only_the_caps_and_the_service_serves_again_once_they_go()
    {
        const int HttpCap = 8, NbdCap = 4, Idle = 150;
        await using var service = await ChildService.StartAsync(_dir,
            "--Limits:MaxHttpConnections", $"{HttpCap}", "--Nbd:MaxConnections", $"{NbdCap}", "--Nbd:Listen", "127.0.0.1:0");
        await service.Http.CreateNodeAsync("d", 1 << 20);
        await service.Http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "d", writable = false }, HttpStatusCode.Created);
        var http = service.Http.BaseAddress!;
        var nbd = IPEndPoint.Parse(service.NbdListening!);
        var sockets = new List<Socket>();
        try
        {
            for (var i = 0; i < Idle; i++)
            {
                sockets.Add(await ConnectAsync(new IPEndPoint(IPAddress.Loopback, http.Port)));
                sockets.Add(await ConnectAsync(nbd));
            }
            // Connections over a cap are closed at accept: the service ends up holding the caps, not
            // 2 × 150 descriptors (listeners, the test's own keep-alive connection and the runtime's
            // diagnostics socket are the few beyond them).
            var held = await PollAsync(() => SocketDescriptors(service.Pid), n => n <= HttpCap + NbdCap + 8, TimeSpan.FromSeconds(30));
            Assert.True(held <= HttpCap + NbdCap + 8, $"the service holds {held} sockets with {2 * Idle} idle connections open");
            Assert.False(service.HasExited, service.Log);
        }
        finally
        {
            foreach (var s in sockets)
                s.Dispose();
        }

        // Once they go, both doors serve again (the server notices each close; a bounded poll, no sleep).
        using var fresh = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.Zero }) { BaseAddress = http, Timeout = TimeSpan.FromSeconds(5) };
        var healthy = await PollAsync(async () =>
        {
            try
            {
                using var r = await fresh.GetAsync("/healthz");
                return r.StatusCode;
            }
            catch (HttpRequestException)
            {
                return HttpStatusCode.ServiceUnavailable;
            }
        }, s => s == HttpStatusCode.OK, TimeSpan.FromSeconds(30));
        Assert.Equal(HttpStatusCode.OK, healthy);
        var size = await PollAsync(async () =>
        {
            try
            {
                await using var client = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd://{nbd}/e"));
                return client.Size;
            }
            catch (Exception e) when (e is IOException or SocketException or NbdException)
            {
                return -1;
            }
        }, s => s > 0, TimeSpan.FromSeconds(30));
        Assert.Equal(1 << 20, size);
        Assert.False(service.HasExited, service.Log);
    }

    [Fact]
    public async Task Caps_that_do_not_fit_the_descriptor_limit_are_lowered_with_a_warning_and_a_reserve_above_it_is_refused()
    {
        var hard = HardDescriptorLimit();
        await using (var clamped = await ChildService.StartAsync(_dir, "--Limits:ReservedFileDescriptors", $"{hard - 100}"))
        {
            Assert.Contains("the connection caps are lowered to fit 100", clamped.Log, StringComparison.Ordinal);
            await clamped.Http.GetJsonAsync("/api/v1/nodes");
        }
        var refused = await ChildService.RunToExitAsync(_dir, "--Limits:ReservedFileDescriptors", $"{hard + 1}");
        Assert.True(refused.ExitCode == ExitCodes.Configuration, refused.ToString());
        Assert.Contains("RLIMIT_NOFILE", Assert.Single(refused.StderrLines), StringComparison.Ordinal);
    }

    [Fact]
    public void The_budget_keeps_fitting_caps_lowers_the_others_in_proportion_and_refuses_an_empty_one()
    {
        var limits = new LimitsOptions { MaxHttpConnections = 1024, MaxHttpUpgradedConnections = 16, ReservedFileDescriptors = 1024 };

        var fits = ConnectionBudget.Fit(20000, limits, nbdConnections: 1024);
        Assert.Equal((1024, 16, 1024), (fits.HttpConnections, fits.HttpUpgradedConnections, fits.NbdConnections));
        Assert.Null(fits.Clamped);

        var tight = ConnectionBudget.Fit(1100, limits, nbdConnections: 1024);
        Assert.True(tight.HttpConnections + tight.HttpUpgradedConnections + tight.NbdConnections <= 76);
        Assert.Equal(tight.HttpConnections, tight.NbdConnections);
        Assert.True(tight.HttpUpgradedConnections >= 1);
        Assert.Contains("Limits:MaxHttpConnections 1024 -> ", tight.Clamped, StringComparison.Ordinal);

        var nbdOff = ConnectionBudget.Fit(1100, limits, nbdConnections: 0);
        Assert.Equal(0, nbdOff.NbdConnections);
        Assert.True(nbdOff.HttpConnections + nbdOff.HttpUpgradedConnections <= 76);

        var unknown = ConnectionBudget.Fit(null, limits, nbdConnections: 1024);
        Assert.Equal(1024, unknown.HttpConnections);

        var refused = Assert.Throws<StartupRefusedException>(() => ConnectionBudget.Fit(1000, limits, nbdConnections: 1024));
        Assert.Equal(ExitCodes.Configuration, refused.ExitCode);
    }

    private static async Task<Socket> ConnectAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(endPoint);
        return socket;
    }

    /// <summary>Sockets among the process's open descriptors (Linux /proc).</summary>
    private static int SocketDescriptors(int pid)
    {
        var count = 0;
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget?.StartsWith("socket:", StringComparison.Ordinal) == true)
                    count++;
            }
            catch (IOException)
            {
                // Closed meanwhile.
            }
        }
        return count;
    }

    private static int HardDescriptorLimit()
    {
        var line = File.ReadLines("/proc/self/limits").First(l => l.StartsWith("Max open files", StringComparison.Ordinal));
        return int.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[4], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static Task<T> PollAsync<T>(Func<T> read, Func<T, bool> done, TimeSpan timeout) => PollAsync(() => Task.FromResult(read()), done, timeout);

    /// <summary>Reads a state until it satisfies <paramref name="done"/> or the time is up; returns the last value read.</summary>
    private static async Task<T> PollAsync<T>(Func<Task<T>> read, Func<T, bool> done, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var value = await read();
            if (done(value) || DateTime.UtcNow > deadline)
                return value;
            await Task.Delay(50);
        }
    }
}
