using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>Jobs on the dashboard: the mirror form, the live chart, the verbs per status, the history of finished jobs.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardJobTests(ChromiumFixture chromium) : DashboardTestBase(chromium)
{
    [BrowserFact]
    public async Task Mirror_started_from_the_form_charts_progress_and_rates_reaches_ready_and_completes()
    {
        // A source full of data, so every byte is read and the speed limit holds the job mid-way.
        await Http.CreateNodeAsync("src", 64 * MiB);
        await Http.CreateNodeAsync("dst", 64 * MiB);
        for (var offset = 0L; offset < 64 * MiB; offset += 16 * MiB)
            await Http.WriteAsync("src", offset, ApiClient.Pattern(16 * (int)MiB, (byte)(offset >> 20)));

        await Dashboard.GotoAsync("#/nodes/src");
        var form = Page.GetByTestId("mirror-form");
        // The free node of the device's size is the default target.
        await Expect(form.GetByTestId("mirror-target")).ToHaveValueAsync("dst");
        await form.GetByTestId("mirror-id").FillAsync("mirror0");
        await form.GetByTestId("mirror-speed").FillAsync("4M");
        await form.Locator("summary").ClickAsync();
        await form.GetByTestId("mirror-buf-size").FillAsync("1M");
        await form.GetByTestId("mirror-start").ClickAsync();

        var job = Dashboard.Job("mirror0");
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("running");
        var started = await Http.GetJsonAsync("/api/v1/jobs/mirror0");
        Assert.Equal(4 * MiB, (long)started["speed"]!);
        Assert.Equal(1 * MiB, (long)started["bufSize"]!);
        Assert.Equal("dst", (string?)started["target"]);

        // Guest writes while it copies: the chart shows a dirty rate besides the copy rate.
        using var writes = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            for (var i = 0; !writes.IsCancellationRequested; i++)
            {
                await Http.WriteAsync("src", (i % 60) * MiB, ApiClient.Pattern(256 * 1024, (byte)i));
                await Task.Delay(100);
            }
        });
        var progress = job.GetByTestId("job-progress");
        await Page.WaitForFunctionAsync(
            @"() => { const p = document.querySelector(""main > .view:not([hidden]) [data-job='mirror0'] [data-testid=job-progress]"");
                      const v = Number(p && p.dataset.progress); return v >= 0.25 && v <= 0.85; }",
            null, new() { PollingInterval = 100, Timeout = 60_000 });
        var chart = job.GetByTestId("job-chart");
        await Page.WaitForFunctionAsync(
            @"() => { const c = document.querySelector(""main > .view:not([hidden]) [data-job='mirror0'] canvas.job-chart"");
                      return c && Number(c.dataset.samples) >= 6 && Number(c.dataset.peakCopyRate) > 0 && Number(c.dataset.peakDirtyRate) > 0; }",
            null, new() { PollingInterval = 100, Timeout = 60_000 });
        await writes.CancelAsync();
        await writer;

        // Each series is on the canvas in its colour (the legend's): progress, copy rate, dirty rate.
        foreach (var (series, color) in new[] { ("progress", "#2563eb"), ("copy", "#15803d"), ("dirty", "#dc2626") })
        {
            var pixels = await chart.EvaluateAsync<int>(
                @"(c, hex) => { const [r, g, b] = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
                     const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                     for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 24 && d[i + 3] > 200) n++;
                     return n; }", color);
            Assert.True(pixels > 20, $"the {series} line has {pixels} pixels of {color}");
            await Expect(job.GetByTestId($"job-legend-{series}")).ToBeVisibleAsync();
        }
        await Expect(job.GetByTestId("job-pause")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-resume")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-complete")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-finalize")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-dismiss")).ToBeDisabledAsync();
        await Expect(Dashboard.NodeSummary.GetByTestId("node-badge-busy")).ToHaveTextAsync("busy · mirror0");
        await Dashboard.ScreenshotAsync("dashboard-mirror.png");

        // Lift the limit from the job's speed field; the job catches up and becomes ready.
        await job.GetByTestId("job-speed").FillAsync("0");
        await job.GetByTestId("job-set-speed").ClickAsync();
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("ready", new() { Timeout = 60_000 });
        await Expect(progress).ToHaveAttributeAsync("data-progress", "1.0000");
        await Expect(job.GetByTestId("job-eta")).ToHaveTextAsync("in sync");
        await Expect(job.GetByTestId("job-complete")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-finalize")).ToBeDisabledAsync();
        Assert.Equal(0, (long)(await Http.GetJsonAsync("/api/v1/jobs/mirror0"))["speed"]!);

        await job.GetByTestId("job-complete").ClickAsync();
        // auto-dismiss: the concluded job leaves the list; the pivot gives src the target's image
        // and the target node goes away.
        await Expect(job).ToHaveCountAsync(0);
        await Expect(Dashboard.NodeSummary.GetByTestId("node-location")).ToHaveTextAsync("dst.img");
        await Expect(Dashboard.NavItem("dst")).ToHaveCountAsync(0);
        var done = await Http.GetJsonAsync("/api/v1/jobs/mirror0?include=dismissed");
        Assert.Equal("completed", (string?)done["outcome"]);

        // The history lists it as completed.
        await Dashboard.GotoAsync("#/jobs");
        await Expect(Dashboard.HistoryRow("mirror0")).ToHaveAttributeAsync("data-outcome", "completed");
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Verb_buttons_follow_the_status_and_the_pause_and_a_paused_job_offers_only_force_cancel()
    {
        await Http.CreateNodeAsync("disk0", 16 * MiB);
        await Http.CreateNodeAsync("disk1", 16 * MiB);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern(8 * (int)MiB, 1));
        // 1 byte/s after a first 1 MiB: the job stays running for as long as the test looks at it.
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j0", device = "disk0", target = "disk1", sync = "full", speed = 1, bufSize = MiB, autoDismiss = false }, HttpStatusCode.Created);
        await Dashboard.GotoAsync("#/jobs");
        var job = Dashboard.Job("j0");
        async Task ExpectButtons(string status, params string[] enabled)
        {
            await Expect(job.GetByTestId("job-status")).ToHaveTextAsync(status);
            foreach (var verb in new[] { "pause", "resume", "complete", "cancel", "force", "finalize", "dismiss", "set-speed" })
            {
                var button = job.GetByTestId($"job-{verb}");
                if (enabled.Contains(verb))
                    await Expect(button).ToBeEnabledAsync();
                else
                    await Expect(button).ToBeDisabledAsync();
            }
        }

        await ExpectButtons("running", "pause", "cancel", "force", "set-speed");

        await job.GetByTestId("job-pause").ClickAsync();
        await ExpectButtons("paused", "resume", "force", "set-speed");
        // One paused badge: the status says it; no second badge repeats it.
        await Expect(job.Locator(".badge").Filter(new() { HasTextRegex = new System.Text.RegularExpressions.Regex("paus") })).ToHaveCountAsync(1);
        await Expect(job.GetByTestId("job-eta")).ToHaveTextAsync("paused");
        await Expect(job.GetByTestId("job-copy-rate")).ToHaveTextAsync("0 B/s");
        // The soft cancel is off because the service refuses it (QEMU's rule), and says so.
        await Expect(job.GetByTestId("job-cancel")).ToHaveAttributeAsync("title", new System.Text.RegularExpressions.Regex("job-paused"));
        await Http.PostProblemAsync("/api/v1/jobs/j0/cancel", new { force = false }, 409, "job-paused");
        await Dashboard.ScreenshotAsync("dashboard-paused.png");

        await job.GetByTestId("job-resume").ClickAsync();
        await ExpectButtons("running", "pause", "cancel", "force", "set-speed");

        await job.GetByTestId("job-pause").ClickAsync();
        await ExpectButtons("paused", "resume", "force", "set-speed");
        await job.GetByTestId("job-force").ClickAsync();
        await ExpectButtons("concluded", "dismiss");
        await Expect(job.GetByTestId("job-badge-cancelled")).ToHaveTextAsync("cancelled (force)");
        await Expect(job.GetByTestId("job-error")).ToHaveTextAsync("Error: Operation canceled");
        var ended = await Http.GetJsonAsync("/api/v1/jobs/j0");
        Assert.Equal("force", (string?)ended["cancelMode"]);

        await job.GetByTestId("job-dismiss").ClickAsync();
        await Expect(job).ToHaveCountAsync(0);
        await Expect(Dashboard.HistoryRow("j0")).ToHaveAttributeAsync("data-cancel-mode", "force");
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Ready_job_offers_complete_and_a_soft_cancel_that_keeps_a_copy()
    {
        await Http.CreateNodeAsync("disk0", 4 * MiB);
        await Http.CreateNodeAsync("disk1", 4 * MiB);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j1", device = "disk0", target = "disk1", sync = "full", autoDismiss = false }, HttpStatusCode.Created);
        await Dashboard.GotoAsync("#/jobs");
        var job = Dashboard.Job("j1");
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("ready");
        await Expect(job.GetByTestId("job-complete")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-cancel")).ToHaveAttributeAsync("title", new System.Text.RegularExpressions.Regex("point-in-time copy"));

        // Paused in ready is standby: complete is still accepted (QEMU's table), a soft cancel is not.
        await job.GetByTestId("job-pause").ClickAsync();
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("standby");
        await Expect(job.GetByTestId("job-complete")).ToBeEnabledAsync();
        await Expect(job.GetByTestId("job-cancel")).ToBeDisabledAsync();
        await job.GetByTestId("job-resume").ClickAsync();
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("ready");

        await job.GetByTestId("job-cancel").ClickAsync();
        await Expect(job.GetByTestId("job-status")).ToHaveTextAsync("concluded");
        await Expect(job.GetByTestId("job-badge-cancelled")).ToHaveTextAsync("cancelled (soft)");
        await Expect(job.GetByTestId("job-error")).ToBeHiddenAsync();
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task History_lists_finished_jobs_with_outcome_duration_and_bytes()
    {
        await Http.CreateNodeAsync("disk0", 4 * MiB);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern((int)MiB, 3));
        // Three endings: completed (pivot), cancelled soft (in ready), cancelled force (while running).
        await Http.CreateNodeAsync("t1", 4 * MiB);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "pivot", device = "disk0", target = "t1", sync = "full" }, HttpStatusCode.Created);
        await WaitForStatusAsync("pivot", "ready");
        await Http.PostJsonAsync("/api/v1/jobs/pivot/complete", new { });
        await WaitForHistoryAsync("pivot");
        await Http.CreateNodeAsync("t2", 4 * MiB);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "copy", device = "disk0", target = "t2", sync = "full" }, HttpStatusCode.Created);
        await WaitForStatusAsync("copy", "ready");
        await Http.PostJsonAsync("/api/v1/jobs/copy/cancel", new { });
        await WaitForHistoryAsync("copy");
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "abort", device = "disk0", target = "t2", sync = "full", speed = 1 }, HttpStatusCode.Created);
        await Http.PostJsonAsync("/api/v1/jobs/abort/cancel", new { force = true });
        await WaitForHistoryAsync("abort");

        await Dashboard.GotoAsync("#/jobs");
        var rows = Page.GetByTestId("history-row");
        await Expect(rows).ToHaveCountAsync(3);
        // Newest first, as the API pages them.
        Assert.Equal(["abort", "copy", "pivot"], [.. await rows.EvaluateAllAsync<string[]>("rs => rs.map(r => r.dataset.job)")]);
        await Expect(Dashboard.HistoryRow("pivot").GetByTestId("history-outcome")).ToHaveTextAsync("completed");
        await Expect(Dashboard.HistoryRow("copy").GetByTestId("history-outcome")).ToHaveTextAsync("cancelled (soft)");
        await Expect(Dashboard.HistoryRow("abort").GetByTestId("history-outcome")).ToHaveTextAsync("cancelled (force)");
        await Expect(Dashboard.HistoryRow("abort").Locator("[data-col=error]")).ToHaveTextAsync("Operation canceled");
        await Expect(Dashboard.HistoryRow("pivot").Locator("[data-col=copied]")).ToHaveTextAsync("1 MiB");
        // Duration and times as the API has them, in words and local time.
        var pivot = (await Http.GetJsonAsync("/api/v1/jobs?include=history&limit=3"))["items"]!.AsArray().Single(j => (string?)j!["id"] == "pivot")!;
        var duration = await Dashboard.HistoryRow("pivot").Locator("[data-col=duration]").TextContentAsync();
        Assert.Matches(@"^\d+\.\d s$", duration);
        Assert.InRange(double.Parse(duration![..^2], System.Globalization.CultureInfo.InvariantCulture), (double)pivot["durationSeconds"]! - 0.051, (double)pivot["durationSeconds"]! + 0.051);
        var finished = TimeZoneInfo.ConvertTimeFromUtc((DateTime)pivot["finishedAt"]!, TimeZoneInfo.FindSystemTimeZoneById(DashboardPage.TimeZone));
        await Expect(Dashboard.HistoryRow("pivot").Locator("[data-col=finished]")).ToHaveTextAsync(finished.ToString("yyyy-MM-dd HH:mm:ss", System.Globalization.CultureInfo.InvariantCulture));

        // A job that finishes while the view is open goes on top.
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "late", device = "disk0", target = "t2", sync = "full", speed = 1 }, HttpStatusCode.Created);
        await Http.PostJsonAsync("/api/v1/jobs/late/cancel", new { force = true });
        await Expect(rows.First).ToHaveAttributeAsync("data-job", "late");
        await Dashboard.ScreenshotAsync("dashboard-history.png");
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Mirror_form_offers_a_new_target_of_the_devices_size_and_a_refused_start_leaves_nothing()
    {
        await Http.CreateNodeAsync("vm0", 48 * MiB);
        await Http.CreateNodeAsync("small", 16 * MiB);
        await Http.AddBitmapAsync("vm0", "b0");
        await Dashboard.GotoAsync("#/nodes/vm0");
        var form = Page.GetByTestId("mirror-form");
        var target = form.GetByTestId("mirror-target");

        // No free node of 48 MiB: the form offers a new one of that size; a node of another size is listed but off.
        await Expect(target.Locator("option:checked")).ToHaveTextAsync("+ new node (48 MiB)");
        await Expect(target.Locator("option[value=small]")).ToHaveJSPropertyAsync("disabled", true);
        await Expect(target.Locator("option[value=small]")).ToContainTextAsync("size 16 MiB ≠ 48 MiB");
        await Expect(form.GetByTestId("mirror-new-name")).ToHaveValueAsync("vm0-copy");

        // A refused start (a bitmap mode without a bitmap) creates nothing: the new node is removed again.
        await form.GetByTestId("mirror-bitmap-mode").SelectOptionAsync("never");
        await form.GetByTestId("mirror-start").ClickAsync();
        await Expect(DashboardPage.ActionError(form).GetByTestId("message-code")).ToHaveTextAsync("bitmap-mode-without-bitmap");
        Assert.Equal(2, (await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray().Count);
        Assert.False(File.Exists(Path.Combine(Factory.ImageRoot, "vm0-copy.img")));

        // With the bitmap chosen it starts, on a new node of the device's size.
        await form.GetByTestId("mirror-bitmap").SelectOptionAsync("b0");
        await form.GetByTestId("mirror-start").ClickAsync();
        await Expect(Dashboard.Job("vm0")).ToBeVisibleAsync();
        await Expect(DashboardPage.ActionError(form)).ToBeHiddenAsync();
        var copy = await Http.GetJsonAsync("/api/v1/nodes/vm0-copy");
        Assert.Equal(48 * MiB, (long)copy["size"]!);
        var job = await Http.GetJsonAsync("/api/v1/jobs/vm0");
        Assert.Equal("vm0-copy", (string?)job["target"]);
        Assert.Equal("never", (string?)job["bitmapMode"]);
        // The device is busy now: the form says so instead of offering a start that would be refused.
        await Expect(form.GetByTestId("mirror-start")).ToBeDisabledAsync();
        await Expect(form.GetByTestId("mirror-busy")).ToContainTextAsync("vm0");
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Live_progress_resumes_after_a_failed_refresh_without_waiting_for_an_event()
    {
        await Http.CreateNodeAsync("disk0", 64 * MiB);
        await Http.CreateNodeAsync("disk1", 64 * MiB);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern(48 * (int)MiB, 7));
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "slow", device = "disk0", target = "disk1", sync = "full", speed = MiB, bufSize = MiB }, HttpStatusCode.Created);
        await Dashboard.GotoAsync("#/jobs");
        var progress = Dashboard.Job("slow").GetByTestId("job-progress");
        await Expect(Dashboard.Job("slow").GetByTestId("job-status")).ToHaveTextAsync("running");

        // The job list fails for a while: the page says it is offline and keeps the last values.
        await Page.RouteAsync("**/api/v1/jobs", route => route.AbortAsync());
        await Expect(Page.Locator("body")).ToHaveAttributeAsync("data-offline", "true");
        var frozen = await progress.GetAttributeAsync("data-progress");
        await Page.UnrouteAllAsync();

        // A running job publishes no event while it copies: the 500 ms poll itself must come back.
        await Page.WaitForFunctionAsync(
            @"v => { const p = document.querySelector(""main > .view:not([hidden]) [data-job='slow'] [data-testid=job-progress]"");
                     return p && p.dataset.progress !== v && document.body.dataset.offline === 'false'; }",
            frozen, new() { PollingInterval = 100, Timeout = 20_000 });
        Assert.Equal("running", (string?)(await Http.GetJsonAsync("/api/v1/jobs/slow"))["status"]);
        Dashboard.AssertNoScriptErrors();
    }

    private async Task WaitForStatusAsync(string id, string status)
    {
        for (var i = 0; i < 600; i++)
        {
            if ((string?)(await Http.GetJsonAsync($"/api/v1/jobs/{id}"))["status"] == status)
                return;
            await Task.Delay(50);
        }
        Assert.Fail($"job {id} never reached {status}");
    }

    private async Task WaitForHistoryAsync(string id)
    {
        for (var i = 0; i < 600; i++)
        {
            var items = (await Http.GetJsonAsync("/api/v1/jobs?include=history&limit=50"))["items"]!.AsArray();
            if (items.Any(j => (string?)j!["id"] == id))
                return;
            await Task.Delay(50);
        }
        Assert.Fail($"job {id} never reached the history");
    }
}
