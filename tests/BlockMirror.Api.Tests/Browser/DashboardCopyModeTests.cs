using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>copyMode auto on the dashboard: the job's live chart marks the switch to write-blocking (issue 16 item 4).</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardCopyModeTests : DashboardTestBase
{
    private const int Block = 64 << 10;

    public DashboardCopyModeTests(ChromiumFixture chromium)
        : base(chromium) =>
        // Read when the server starts (the first use of the factory, in InitializeAsync).
        Factory.Settings["Jobs:AutoCopyModeWindow"] = "00:00:01";

    [BrowserFact]
    public async Task Auto_switch_is_marked_on_the_job_chart_and_the_route_says_since_when()
    {
        const long size = 4 * MiB;
        await Http.CreateNodeAsync("disk0", size);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern((int)size, 7));
        await Http.CreateNodeAsync("disk1", size);
        await Dashboard.GotoAsync("#/jobs");

        // Writes far faster than the 1 MiB/s copy: the background copy cannot converge.
        using var writes = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            var random = new Random(5);
            while (!writes.IsCancellationRequested)
            {
                await Http.WriteAsync("disk0", random.Next((int)(size / Block)) * (long)Block, ApiClient.Pattern(Block, (byte)random.Next(256)));
                await Task.Delay(2, CancellationToken.None);
            }
        });
        await Http.PostJsonAsync("/api/v1/jobs/mirror",
            new { id = "j0", device = "disk0", target = "disk1", sync = "full", copyMode = "auto", speed = MiB, bufSize = MiB }, HttpStatusCode.Created);
        var job = Dashboard.Job("j0");
        var chart = job.GetByTestId("job-chart");

        // The mark appears once the job switched, inside the plot, with its label.
        await Expect(chart).ToHaveAttributeAsync("data-switch-mark", "auto → write-blocking", new() { Timeout = 60_000 });
        var info = await Http.GetJsonAsync("/api/v1/jobs/j0");
        Assert.Equal("write-blocking", (string?)info["effectiveCopyMode"]);
        Assert.NotNull(info["copyModeSwitchedAt"]);
        var x = double.Parse((await chart.GetAttributeAsync("data-switch-x"))!, System.Globalization.CultureInfo.InvariantCulture);
        var width = await chart.EvaluateAsync<double>("c => c.clientWidth");
        // Inside the plot (margins 38 and 70): the line sits on a pixel's centre (rounded + 0.5),
        // so a switch drawn at the newest instant lands half a pixel past the plot's right edge.
        Assert.InRange(x, 38, width - 70 + 0.5);
        // Drawn in its colour: a dashed line the plot's height, and the label.
        var pixels = await chart.EvaluateAsync<int>(
            @"c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                     for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - 0x7c) + Math.abs(d[i + 1] - 0x3a) + Math.abs(d[i + 2] - 0xed) < 24 && d[i + 3] > 200) n++;
                     return n; }");
        Assert.True(pixels > 40, $"the switch mark has {pixels} pixels");
        await Expect(job.Locator("[data-role=route]")).ToContainTextAsync("auto (write-blocking since");
        // Writes are write-blocking now: the button to switch by hand is off.
        await Expect(job.GetByTestId("job-write-blocking")).ToBeDisabledAsync();

        // It converges: ready, actively synced, the mark stays.
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("ready", new() { Timeout = 60_000 });
        await Expect(job.GetByTestId("job-badge-actively-synced")).ToBeVisibleAsync();
        await Dashboard.ScreenshotAsync("dashboard-auto-copy-mode.png");
        await writes.CancelAsync();
        await writer;
        await Expect(chart).ToHaveAttributeAsync("data-switch-mark", "auto → write-blocking");
        await Http.PostJsonAsync("/api/v1/jobs/j0/complete", new { });
        await Expect(job).ToHaveCountAsync(0, new() { Timeout = 60_000 });

        // The events view says why, in a sentence.
        await Dashboard.GotoAsync("#/events");
        var switched = Page.Locator("[data-testid=event][data-event=BLOCK_JOB_COPY_MODE_SWITCHED][data-job=j0]");
        await Expect(switched.GetByTestId("event-text")).ToContainTextAsync("j0 switched to write-blocking by itself: writes dirtied");
        Dashboard.AssertNoScriptErrors();
    }
}
