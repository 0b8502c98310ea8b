using System.Diagnostics;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;
using Microsoft.Data.Sqlite;

namespace BlockMirror.Api.Tests.Lifecycle;

/// <summary>
/// SIGTERM (systemd, docker stop, Ctrl+C's cousin) with an event stream open: the stream ends, the
/// stop finishes in a few seconds with exit code 0, and the clean-stop checkpoint is stored (issue
/// 10, case 14). Before, the open stream held the stop for 30 s, after which the block layer's stop
/// ran in the services' disposal and died with ObjectDisposedException (SIGABRT, no checkpoint).
/// </summary>
public sealed class ShutdownTests : IDisposable
{
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-shutdown-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task Sigterm_with_an_event_stream_open_stops_in_seconds_with_exit_0_and_the_clean_stop_checkpoint()
    {
        await using (var service = await ChildService.StartAsync(_dir))
        {
            var http = service.Http;
            await http.CreateNodeAsync("d", 16 * G);
            await http.AddBitmapAsync("d", "p", G, persistent: true);
            foreach (var g in new[] { 1, 4, 9 })
                await http.WriteAsync("d", g * G, ApiClient.Pattern(512, (byte)g));

            using var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/events");
            using var stream = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            await using var body = await stream.Content.ReadAsStreamAsync();
            using var reader = new StreamReader(body);
            Assert.Equal(": connected", await reader.ReadLineAsync());

            var clock = Stopwatch.StartNew();
            var exitCode = await service.TerminateAsync(TimeSpan.FromSeconds(20));
            Assert.True(exitCode == ExitCodes.Success, $"exit {exitCode}\n{service.Log}");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"the stop took {clock.Elapsed}\n{service.Log}");
            // The server ended the stream (its end, not a reset).
            Assert.Equal("", (await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(10))).Trim());
            Assert.DoesNotContain("Exception", service.Log, StringComparison.Ordinal);
        }

        // The clean stop's checkpoint: in-use cleared.
        using (var db = new SqliteConnection($"Data Source={Path.Combine(_dir, "blockmirror.db")};Mode=ReadOnly;Pooling=False"))
        {
            db.Open();
            using var query = db.CreateCommand();
            query.CommandText = "SELECT InUse FROM bitmaps WHERE Node = 'd' AND Name = 'p'";
            Assert.Equal(0L, (long)query.ExecuteScalar()!);
        }

        await using var restarted = await ChildService.StartAsync(_dir);
        Assert.False((bool)(await restarted.Http.GetJsonAsync("/api/v1/nodes/d/bitmaps/p"))["inconsistent"]!);
        Assert.Equal([(1 * G, G), (4 * G, G), (9 * G, G)], ApiClient.Extents(await restarted.Http.GetJsonAsync("/api/v1/nodes/d/bitmaps/p/extents")));
    }
}
