using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>The dashboard in headless Chromium against the service on a real socket; every wait is on page state.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardTests(ChromiumFixture chromium) : IAsyncLifetime
{
    private const long MiB = 1 << 20;

    private readonly KestrelBlockMirrorFactory _factory = new();
    private HttpClient _http = null!;
    private DashboardPage _dashboard = null!;

    private IPage Page => _dashboard.Page;

    public async Task InitializeAsync()
    {
        _http = _factory.CreateSocketClient();
        _dashboard = await DashboardPage.OpenAsync(chromium, _factory.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        await _dashboard.DisposeAsync();
        _http.Dispose();
        await _factory.DisposeAsync();
    }

    [BrowserFact]
    public async Task Node_and_bitmap_created_on_the_page_show_writes_on_the_dirty_map()
    {
        await Page.GetByTestId("node-name").FillAsync("disk0");
        await Page.GetByTestId("node-size").FillAsync("64M");
        await Page.GetByTestId("node-create").ClickAsync();
        var row = _dashboard.NodeRow("disk0");
        await Expect(row.Locator("[data-col=size]")).ToHaveTextAsync("64 MiB");
        await Expect(row.Locator("[data-col=location]")).ToHaveTextAsync("disk0.img");
        Assert.Equal(64 * MiB, (long)(await _http.GetJsonAsync("/api/v1/nodes/disk0"))["size"]!);

        var group = _dashboard.BitmapGroup("disk0");
        await group.GetByTestId("bitmap-name").FillAsync("b0");
        await group.GetByTestId("bitmap-add").ClickAsync();
        var bitmap = _dashboard.Bitmap("disk0", "b0");
        var map = bitmap.GetByTestId("dirty-map");
        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", "0");
        await Expect(bitmap.GetByTestId("badge-recording")).ToBeVisibleAsync();
        await Expect(row.Locator("[data-col=bitmaps]")).ToHaveTextAsync("b0");

        // Writes through the API (not the page): the page learns of them only by its refresh.
        (long Offset, int Length)[] writes = [(0, 65536), (4 * MiB, 262144), (20 * MiB, (int)MiB), (33 * MiB, 65536), (48 * MiB, 3 * (int)MiB), (63 * MiB, 524288)];
        foreach (var (offset, length) in writes)
            await _http.WriteAsync("disk0", offset, ApiClient.Pattern(length, (byte)offset));
        var extents = ApiClient.Extents(await _http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/extents"));
        Assert.Equal(writes.Length, extents.Count);
        var dirty = extents.Sum(e => e.Length);

        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", writes.Length.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await Expect(map).ToHaveAttributeAsync("data-dirty-bytes", dirty.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await Expect(bitmap.GetByTestId("bitmap-count")).ToHaveAttributeAsync("data-count", dirty.ToString(System.Globalization.CultureInfo.InvariantCulture));

        // The picture itself: count the red columns on the canvas and compare with what the page says it drew.
        var drawn = int.Parse((await map.GetAttributeAsync("data-dirty-pixels"))!, System.Globalization.CultureInfo.InvariantCulture);
        var width = int.Parse((await map.GetAttributeAsync("data-width"))!, System.Globalization.CultureInfo.InvariantCulture);
        var red = await map.EvaluateAsync<int>(
            @"c => { const d = c.getContext('2d').getImageData(0, 0, c.width, 1).data; let n = 0;
                     for (let i = 0; i < d.length; i += 4) if (d[i] === 0xdc && d[i + 1] === 0x26 && d[i + 2] === 0x26) n++; return n; }");
        Assert.Equal(drawn, red);
        // Each range covers at least one column and at most its share of the strip, rounded out.
        Assert.InRange(drawn, writes.Length, writes.Sum(w => (int)Math.Ceiling((double)w.Length * width / (64 * MiB)) + 1));

        await _dashboard.ScreenshotAsync("dashboard-dirty-map.png");

        await bitmap.GetByTestId("bitmap-clear").ClickAsync();
        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", "0");
        await Expect(bitmap.GetByTestId("bitmap-count")).ToHaveAttributeAsync("data-count", "0");

        await bitmap.GetByTestId("bitmap-disable").ClickAsync();
        await Expect(bitmap.GetByTestId("badge-disabled")).ToBeVisibleAsync();
        await Expect(bitmap.GetByTestId("bitmap-disable")).ToBeDisabledAsync();
        await Expect(bitmap.GetByTestId("bitmap-enable")).ToBeEnabledAsync();
        Assert.False((bool)(await _http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["recording"]!);

        await bitmap.GetByTestId("bitmap-remove").ClickAsync();
        await Expect(bitmap).ToHaveCountAsync(0);
        _dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Mirror_started_from_the_form_shows_progress_reaches_ready_and_completes()
    {
        // A source full of data, so every byte is read and the speed limit holds the job mid-way.
        await _http.CreateNodeAsync("src", 64 * MiB);
        await _http.CreateNodeAsync("dst", 64 * MiB);
        for (var offset = 0L; offset < 64 * MiB; offset += 16 * MiB)
            await _http.WriteAsync("src", offset, ApiClient.Pattern(16 * (int)MiB, (byte)(offset >> 20)));
        await _http.AddBitmapAsync("src", "backup");
        foreach (var offset in new[] { 3 * MiB, 17 * MiB, 40 * MiB })
            await _http.WriteAsync("src", offset, ApiClient.Pattern((int)MiB, 9));
        await Expect(_dashboard.Bitmap("src", "backup").GetByTestId("dirty-map")).ToHaveAttributeAsync("data-dirty-extents", "3");

        await Page.GetByTestId("mirror-id").FillAsync("mirror0");
        await Page.GetByTestId("mirror-device").SelectOptionAsync("src");
        await Page.GetByTestId("mirror-target").SelectOptionAsync("dst");
        await Page.GetByTestId("mirror-speed").FillAsync("4M");
        await Page.GetByTestId("mirror-buf-size").FillAsync("1M");
        await Page.GetByTestId("mirror-start").ClickAsync();

        var job = _dashboard.Job("mirror0");
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("running");
        var started = await _http.GetJsonAsync("/api/v1/jobs/mirror0");
        Assert.Equal(4 * MiB, (long)started["speed"]!);
        Assert.Equal(1 * MiB, (long)started["bufSize"]!);
        Assert.Equal("src", (string?)started["device"]);

        // The progress bar moves while the job runs (the page polls every 500 ms).
        await Page.WaitForFunctionAsync(
            @"() => { const p = document.querySelector(""[data-job='mirror0'] [data-testid=job-progress]"");
                      const v = Number(p && p.dataset.progress); return v >= 0.25 && v <= 0.85; }",
            null, new() { PollingInterval = 100, Timeout = 60_000 });
        await Expect(job.GetByTestId("job-pause")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-cancel")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-complete")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-finalize")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-dismiss")).ToBeDisabledAsync();
        await Expect(_dashboard.NodeRow("src").Locator("[data-col=busy]")).ToHaveTextAsync("busy · mirror0");
        await _dashboard.ScreenshotAsync("dashboard-mirror.png");

        // Lift the limit from the job's speed field; the job catches up and becomes ready.
        await job.GetByTestId("job-speed").FillAsync("0");
        await job.GetByTestId("job-set-speed").ClickAsync();
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("ready", new() { Timeout = 60_000 });
        await Expect(job.GetByTestId("job-badge-ready")).ToBeVisibleAsync();
        await Expect(job.GetByTestId("job-progress")).ToHaveAttributeAsync("data-progress", "1.0000");
        await Expect(job.GetByTestId("job-complete")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-finalize")).ToBeDisabledAsync();
        Assert.Equal(0, (long)(await _http.GetJsonAsync("/api/v1/jobs/mirror0"))["speed"]!);

        await job.GetByTestId("job-complete").ClickAsync();
        // auto-dismiss: the concluded job leaves the list; the pivot gives src the target's image.
        await Expect(job).ToHaveCountAsync(0);
        await Expect(_dashboard.NodeRow("src").Locator("[data-col=location]")).ToHaveTextAsync("dst.img");
        await Expect(_dashboard.NodeRow("dst")).ToHaveCountAsync(0);
        var done = await _http.GetJsonAsync("/api/v1/jobs/mirror0?include=dismissed");
        Assert.Equal("concluded", (string?)done["status"]);
        Assert.Null((string?)done["error"]);
        await Expect(Page.GetByTestId("event-log")).ToContainTextAsync("BLOCK_JOB_COMPLETED");
        _dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Api_problems_are_shown_with_title_detail_and_code()
    {
        await _http.CreateNodeAsync("disk0", MiB);
        await Page.GetByTestId("node-name").FillAsync("disk0");
        await Page.GetByTestId("node-path").FillAsync("other.img");
        await Page.GetByTestId("node-size").FillAsync("1M");
        await Page.GetByTestId("node-create").ClickAsync();

        var message = Page.GetByTestId("message").First;
        await Expect(message.GetByTestId("message-code")).ToHaveTextAsync("node-exists");
        await Expect(message.GetByTestId("message-title")).Not.ToBeEmptyAsync();
        await Expect(message.GetByTestId("message-detail")).ToContainTextAsync("disk0");

        // A verb the job's state refuses never reaches the API from the page (its button is off),
        // but a refusal from the service still shows: pausing a job twice.
        await _http.CreateNodeAsync("disk1", MiB);
        using (var r = await _http.PostAsJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "disk1", speed = 1, autoDismiss = false }))
            Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        using (var r = await _http.PostAsync("/api/v1/jobs/j/pause", null))
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var job = _dashboard.Job("j");
        await Expect(job.GetByTestId("job-badge-paused")).ToBeVisibleAsync();
        await job.GetByTestId("job-pause").ClickAsync();
        await Expect(Page.GetByTestId("message").First.GetByTestId("message-code")).ToHaveTextAsync("job-already-paused");
        _dashboard.AssertNoScriptErrors();
    }
}
