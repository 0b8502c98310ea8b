using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests;

/// <summary>
/// /metrics (Prometheus text) against the API's own numbers. Every host in the test process
/// publishes a "BlockMirror" meter and an OpenTelemetry listener sees them all; series of the same
/// name and labels from two live hosts overwrite each other (jobs by status, the total). So these
/// tests are their own collection that runs alone, after the parallel ones, with unique names.
/// </summary>
[CollectionDefinition(CollectionName, DisableParallelization = true)]
[Collection(CollectionName)]
public sealed partial class MetricsTests : ServiceTest
{
    public const string CollectionName = "Metrics";

    private const long MiB = 1 << 20;

    private readonly string _suffix = Guid.NewGuid().ToString("N")[..8];

    [Fact]
    public async Task Bitmap_dirty_bytes_and_bytes_copied_match_the_api()
    {
        var src = $"msrc-{_suffix}";
        var dst = $"mdst-{_suffix}";
        var job = $"mjob-{_suffix}";
        await Http.CreateNodeAsync(src, 8 * MiB);
        await Http.CreateNodeAsync(dst, 8 * MiB);
        await Http.AddBitmapAsync(src, "b0");
        await Http.WriteAsync(src, 0, ApiClient.Pattern(3 * (int)MiB, 1));
        await Http.WriteAsync(src, 5 * MiB + 1000, ApiClient.Pattern(10_000, 2));

        var scrape = await ScrapeAsync();
        Assert.Equal(await BitmapCountAsync(src, "b0"), scrape.Single("blockmirror_bitmap_dirty_bytes", ("node", src), ("bitmap", "b0")));

        await using var events = await EventWaiter.StartAsync(Http);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = job, device = src, target = dst, sync = "full", autoDismiss = false }, HttpStatusCode.Created);
        await events.WaitStatusAsync(job, "ready");

        scrape = await ScrapeAsync();
        var ready = await Http.GetJsonAsync($"/api/v1/jobs/{job}");
        Assert.Equal("ready", (string?)ready["status"]);
        Assert.Equal((long)ready["bytesCopied"]!, scrape.Single("blockmirror_job_copied_bytes_total", ("job_id", job)));
        Assert.Equal(1, scrape.Single("blockmirror_jobs", ("status", "ready")));
        Assert.Equal(0, scrape.Single("blockmirror_jobs", ("status", "running")));

        // Writes during the mirror: the bitmap records them and the job copies them again.
        await Http.WriteAsync(src, 7 * MiB, ApiClient.Pattern(65_536, 3));
        scrape = await ScrapeAsync();
        Assert.Equal(await BitmapCountAsync(src, "b0"), scrape.Single("blockmirror_bitmap_dirty_bytes", ("node", src), ("bitmap", "b0")));

        await Http.PostJsonAsync($"/api/v1/jobs/{job}/complete", new { });
        await events.WaitStatusAsync(job, "concluded");
        var concluded = await Http.GetJsonAsync($"/api/v1/jobs/{job}");
        Assert.Null((string?)concluded["error"]);
        var copied = (long)concluded["bytesCopied"]!;
        Assert.True(copied >= 3 * MiB + 10_000, $"bytesCopied {copied}");

        scrape = await ScrapeAsync();
        Assert.Equal(copied, scrape.Single("blockmirror_job_copied_bytes_total", ("job_id", job)));
        Assert.Equal(1, scrape.Single("blockmirror_jobs", ("status", "concluded")));
        Assert.Equal(0, scrape.Single("blockmirror_jobs", ("status", "ready")));
        Assert.Equal(copied, scrape.Single("blockmirror_copied_bytes_total"));
        // The pivot keeps the device's name and bitmaps.
        Assert.Equal(await BitmapCountAsync(src, "b0"), scrape.Single("blockmirror_bitmap_dirty_bytes", ("node", src), ("bitmap", "b0")));

        // Dismissed jobs leave the per-job series; the total keeps their bytes.
        await Http.PostJsonAsync($"/api/v1/jobs/{job}/dismiss", new { });
        scrape = await ScrapeAsync();
        Assert.Empty(scrape.All("blockmirror_job_copied_bytes_total", ("job_id", job)));
        Assert.Equal(0, scrape.Single("blockmirror_jobs", ("status", "concluded")));
        Assert.Equal(copied, scrape.Single("blockmirror_copied_bytes_total"));

        // HTTP server metrics from the ASP.NET Core instrumentation, by route.
        Assert.True(scrape.All("http_server_request_duration_seconds_count", ("http_route", "/api/v1/nodes/{node}/data"), ("http_response_status_code", "204")).Sum() >= 3);
    }

    [Fact]
    public async Task Nbd_requests_are_counted_by_export_and_command()
    {
        await using var factory = new BlockMirrorFactory(settings: new Dictionary<string, string?> { ["Nbd:Listen"] = "127.0.0.1:0" });
        using var http = factory.CreateClient();
        var name = $"e-{_suffix}";
        await http.CreateNodeAsync(name, 4 * MiB);
        var export = await http.PostJsonAsync("/api/v1/exports", new { name, node = name, writable = true }, HttpStatusCode.Created);
        await using (var client = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!)))
        {
            for (var i = 0; i < 3; i++)
                await client.WriteAsync(i * 65536, ApiClient.Pattern(65536, (byte)i));
            var buffer = new byte[65536];
            await client.ReadAsync(0, buffer);
            await client.FlushAsync();
            // Out of range: refused by the server, and still a request it received.
            await Assert.ThrowsAsync<NbdException>(async () => await client.ReadAsync(4 * MiB, buffer));
        }

        var scrape = new Scrape(await http.GetStringAsync("/metrics"));
        Assert.Equal(3, scrape.Single("blockmirror_nbd_requests_total", ("export", name), ("command", "write")));
        Assert.Equal(2, scrape.Single("blockmirror_nbd_requests_total", ("export", name), ("command", "read")));
        Assert.Equal(1, scrape.Single("blockmirror_nbd_requests_total", ("export", name), ("command", "flush")));
    }

    [Fact]
    public async Task Metrics_are_prometheus_text()
    {
        using var response = await Http.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.MediaType, StringComparison.Ordinal);
        var text = await response.Content.ReadAsStringAsync();
        Assert.Contains("# TYPE blockmirror_jobs gauge", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE blockmirror_copied_bytes_total counter", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Failures_an_operator_must_act_on_are_counted()
    {
        var text = await Http.GetStringAsync("/metrics");
        Assert.Contains("# TYPE blockmirror_journal_fold_failures_total counter", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE blockmirror_job_save_failures_total counter", text, StringComparison.Ordinal);
    }

    private async Task<long> BitmapCountAsync(string node, string bitmap) =>
        (long)(await Http.GetJsonAsync($"/api/v1/nodes/{node}/bitmaps/{bitmap}"))["count"]!;

    private async Task<Scrape> ScrapeAsync() => new(await Http.GetStringAsync("/metrics"));

    /// <summary>The samples of one scrape; a sample matches when it has every given label (others are ignored).</summary>
    private sealed partial class Scrape(string text)
    {
        private readonly List<(string Name, Dictionary<string, string> Labels, double Value)> _samples = Parse(text);

        public List<long> All(string name, params (string Key, string Value)[] labels) =>
            [.. _samples.Where(s => s.Name == name && labels.All(l => s.Labels.GetValueOrDefault(l.Key) == l.Value)).Select(s => (long)s.Value)];

        public long Single(string name, params (string Key, string Value)[] labels)
        {
            var values = All(name, labels);
            Assert.True(values.Count == 1, $"{name} {string.Join(",", labels)}: {values.Count} samples in\n{text}");
            return values[0];
        }

        private static List<(string, Dictionary<string, string>, double)> Parse(string text)
        {
            var samples = new List<(string, Dictionary<string, string>, double)>();
            foreach (var line in text.Split('\n'))
            {
                if (line.Length == 0 || line[0] == '#')
                    continue;
                var m = SampleLine().Match(line);
                Assert.True(m.Success, $"not a sample line: {line}");
                var labels = LabelPair().Matches(m.Groups["labels"].Value)
                    .ToDictionary(l => l.Groups["k"].Value, l => Regex.Unescape(l.Groups["v"].Value), StringComparer.Ordinal);
                samples.Add((m.Groups["name"].Value, labels, double.Parse(m.Groups["value"].Value, CultureInfo.InvariantCulture)));
            }
            return samples;
        }

        [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>.*)\})?\s+(?<value>\S+)(\s+\d+)?$")]
        private static partial Regex SampleLine();

        [GeneratedRegex(@"(?<k>[a-zA-Z_][a-zA-Z0-9_]*)=""(?<v>(?:[^""\\]|\\.)*)""")]
        private static partial Regex LabelPair();
    }
}
