using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>The nodes view, a node's page with its bitmaps, and errors shown where they happen.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardTests(ChromiumFixture chromium) : DashboardTestBase(chromium)
{
    [BrowserFact]
    public async Task Node_and_bitmap_created_on_the_page_show_writes_on_the_dirty_map()
    {
        await Page.GetByTestId("node-name").FillAsync("disk0");
        await Page.GetByTestId("node-size").FillAsync("64M");
        await Page.GetByTestId("node-create").ClickAsync();
        // A node added on the page opens its own page.
        await Expect(Page.Locator("body")).ToHaveAttributeAsync("data-view", "node");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-size")).ToHaveTextAsync("64 MiB");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-location")).ToHaveTextAsync("disk0.img");
        Assert.Equal(64 * MiB, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0"))["size"]!);

        var card = Page.GetByTestId("node-bitmaps");
        await card.GetByTestId("bitmap-name").FillAsync("b0");
        await card.GetByTestId("bitmap-add").ClickAsync();
        var bitmap = Dashboard.Bitmap("b0");
        var map = bitmap.GetByTestId("dirty-map");
        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", "0");
        await Expect(bitmap.GetByTestId("badge-recording")).ToBeVisibleAsync();

        // Writes through the API (not the page): the page learns of them only by its refresh.
        (long Offset, int Length)[] writes = [(0, 65536), (4 * MiB, 262144), (20 * MiB, (int)MiB), (33 * MiB, 65536), (48 * MiB, 3 * (int)MiB), (63 * MiB, 524288)];
        foreach (var (offset, length) in writes)
            await Http.WriteAsync("disk0", offset, ApiClient.Pattern(length, (byte)offset));
        var extents = ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/extents"));
        Assert.Equal(writes.Length, extents.Count);
        var dirty = extents.Sum(e => e.Length);

        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", Invariant(writes.Length));
        await Expect(map).ToHaveAttributeAsync("data-dirty-bytes", Invariant(dirty));
        await Expect(bitmap.GetByTestId("bitmap-count")).ToHaveAttributeAsync("data-count", Invariant(dirty));

        // The picture itself: count the red columns on the canvas and compare with what the page says it drew.
        var drawn = int.Parse((await map.GetAttributeAsync("data-dirty-pixels"))!, System.Globalization.CultureInfo.InvariantCulture);
        var width = int.Parse((await map.GetAttributeAsync("data-width"))!, System.Globalization.CultureInfo.InvariantCulture);
        var red = await map.EvaluateAsync<int>(
            @"c => { const d = c.getContext('2d').getImageData(0, 0, c.width, 1).data; let n = 0;
                     for (let i = 0; i < d.length; i += 4) if (d[i] === 0xdc && d[i + 1] === 0x26 && d[i + 2] === 0x26) n++; return n; }");
        Assert.Equal(drawn, red);
        // Each range covers at least one column and at most its share of the strip, rounded out.
        Assert.InRange(drawn, writes.Length, writes.Sum(w => (int)Math.Ceiling((double)w.Length * width / (64 * MiB)) + 1));

        await Dashboard.ScreenshotAsync("dashboard-node.png");

        await bitmap.GetByTestId("bitmap-clear").ClickAsync();
        await Expect(map).ToHaveAttributeAsync("data-dirty-extents", "0");
        await Expect(bitmap.GetByTestId("bitmap-count")).ToHaveAttributeAsync("data-count", "0");

        await bitmap.GetByTestId("bitmap-disable").ClickAsync();
        await Expect(bitmap.GetByTestId("badge-disabled")).ToBeVisibleAsync();
        await Expect(bitmap.GetByTestId("bitmap-disable")).ToBeDisabledAsync();
        await Expect(bitmap.GetByTestId("bitmap-enable")).ToBeEnabledAsync();
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["recording"]!);

        await bitmap.GetByTestId("bitmap-remove").ClickAsync();
        await Expect(bitmap).ToHaveCountAsync(0);
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Node_list_links_each_node_to_its_page_with_only_its_bitmaps_exports_and_jobs()
    {
        foreach (var name in new[] { "web0", "web1", "db0", "db0-copy", "backup" })
            await Http.CreateNodeAsync(name, 16 * MiB);
        await Http.AddBitmapAsync("db0", "nightly");
        await Http.AddBitmapAsync("web0", "hourly");
        await Http.PostJsonAsync("/api/v1/exports", new { name = "db0", node = "db0", writable = false }, HttpStatusCode.Created);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "db0-mirror", device = "db0", target = "db0-copy", sync = "full", speed = 1 }, HttpStatusCode.Created);

        // Every node once in the table and once in the sidebar, the table saying what each is doing.
        await Expect(Page.GetByTestId("node-row")).ToHaveCountAsync(5);
        await Expect(Page.GetByTestId("node-nav-item")).ToHaveCountAsync(5);
        await Expect(Dashboard.NodeRow("db0").Locator("[data-col=busy]")).ToContainTextAsync("busy · db0-mirror");
        await Expect(Dashboard.NodeRow("db0").Locator("[data-col=exports]")).ToHaveTextAsync("db0");
        await Expect(Dashboard.NavItem("db0")).ToHaveAttributeAsync("data-state", "busy");
        await Expect(Dashboard.NavItem("backup")).ToHaveAttributeAsync("data-state", "idle");
        await Dashboard.ScreenshotAsync("dashboard-nodes.png");

        // The sidebar's filter narrows the list by name.
        await Page.GetByTestId("node-filter").FillAsync("db");
        await Expect(Page.GetByTestId("node-nav-item")).ToHaveCountAsync(2);
        await Page.GetByTestId("node-filter").FillAsync("");
        await Expect(Page.GetByTestId("node-nav-item")).ToHaveCountAsync(5);

        // A node's page: only its own bitmaps, exports and jobs.
        await Dashboard.NavItem("db0").Locator("a").ClickAsync();
        await Expect(Page.Locator("body")).ToHaveAttributeAsync("data-view", "node");
        await Expect(Dashboard.NavItem("db0")).ToHaveClassAsync("current");
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("db0");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-badge-busy")).ToHaveTextAsync("busy · db0-mirror");
        await Expect(Page.Locator("[data-testid=node-bitmaps] [data-testid=bitmap]")).ToHaveCountAsync(1);
        await Expect(Dashboard.Bitmap("nightly")).ToBeVisibleAsync();
        await Expect(Page.GetByTestId("export-row")).ToHaveCountAsync(1);
        await Expect(Dashboard.Export("db0").Locator("[data-col=access]")).ToHaveTextAsync("read-only");
        await Expect(Dashboard.View.GetByTestId("job")).ToHaveCountAsync(1);
        await Expect(Dashboard.Job("db0-mirror")).ToBeVisibleAsync();
        // While a job or an export uses it the node cannot be removed (node-busy): the button says why.
        await Expect(Dashboard.NodeSummary.GetByTestId("node-delete")).ToBeDisabledAsync();

        // The job's page link leads to the target's page, which shows the same job.
        await Dashboard.Job("db0-mirror").Locator("[data-role=route] a", new() { HasText = "db0-copy" }).ClickAsync();
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("db0-copy");
        await Expect(Dashboard.Job("db0-mirror")).ToBeVisibleAsync();
        await Expect(Page.GetByTestId("export-row")).ToHaveCountAsync(0);

        // An idle node with nothing on it: its page removes it, and the view returns to the list.
        await Dashboard.GotoAsync("#/nodes/backup");
        await Expect(Dashboard.View.GetByTestId("job")).ToHaveCountAsync(0);
        await Dashboard.NodeSummary.GetByTestId("node-delete-image").CheckAsync();
        await Dashboard.NodeSummary.GetByTestId("node-delete").ClickAsync();
        await Expect(Page.Locator("body")).ToHaveAttributeAsync("data-view", "nodes");
        await Expect(Dashboard.NodeRow("backup")).ToHaveCountAsync(0);
        Assert.False(File.Exists(Path.Combine(Factory.ImageRoot, "backup.img")));
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Api_problems_are_shown_next_to_the_action_that_caused_them()
    {
        await Http.CreateNodeAsync("disk0", MiB);
        var form = Page.GetByTestId("node-form");
        await Page.GetByTestId("node-name").FillAsync("disk0");
        await Page.GetByTestId("node-path").FillAsync("other.img");
        await Page.GetByTestId("node-size").FillAsync("1M");
        await Page.GetByTestId("node-create").ClickAsync();

        // In the form that sent it: title, code, detail; the banner at the top stays empty.
        var error = DashboardPage.ActionError(form);
        await Expect(error.GetByTestId("message-code")).ToHaveTextAsync("node-exists");
        await Expect(error.GetByTestId("message-title")).Not.ToBeEmptyAsync();
        await Expect(error.GetByTestId("message-detail")).ToContainTextAsync("disk0");
        await Expect(error).ToBeInViewportAsync();
        await Expect(Page.GetByTestId("message")).ToHaveCountAsync(0);

        // The field named by the errors map is listed; a local input error shows in the same place.
        await Page.GetByTestId("node-name").FillAsync("disk1");
        await Page.GetByTestId("node-size").FillAsync("1000");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(error.GetByTestId("message-code")).ToHaveTextAsync("invalid-size");
        await Page.GetByTestId("node-size").FillAsync("lots");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(error.GetByTestId("message-detail")).ToContainTextAsync("\"lots\" is not a size");
        await Page.GetByTestId("node-kind-nbd").CheckAsync();
        await Page.GetByTestId("node-uri").FillAsync("http://example.com/");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(error.GetByTestId("message-code")).ToHaveTextAsync("invalid-uri");

        // A success clears the form's last error.
        await Page.GetByTestId("node-kind-create").CheckAsync();
        await Page.GetByTestId("node-size").FillAsync("1M");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(Page.Locator("body")).ToHaveAttributeAsync("data-view", "node");
        await Dashboard.GotoAsync("#/nodes");
        await Expect(error).ToBeHiddenAsync();

        // A bitmap command refused by the service: the error shows in that bitmap's row, not elsewhere.
        await Http.AddBitmapAsync("disk0", "a");
        await Dashboard.GotoAsync("#/nodes/disk0");
        var bitmaps = Page.GetByTestId("node-bitmaps");
        await bitmaps.GetByTestId("bitmap-name").FillAsync("a");
        await bitmaps.GetByTestId("bitmap-add").ClickAsync();
        var addError = DashboardPage.ActionError(bitmaps.GetByTestId("bitmap-form"));
        await Expect(addError.GetByTestId("message-code")).ToHaveTextAsync("bitmap-exists");
        await Expect(DashboardPage.ActionError(Dashboard.Bitmap("a"))).ToBeHiddenAsync();

        // A job verb the service refuses: the job is paused behind the page's back while the page
        // cannot refresh its job list, so its card still offers Pause. The error belongs to that card.
        await Http.CreateNodeAsync("disk2", MiB);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "disk2", speed = 1, autoDismiss = false }, HttpStatusCode.Created);
        await Dashboard.GotoAsync("#/jobs");
        var job = Dashboard.Job("j");
        await Expect(job.GetByTestId("job-pause")).ToBeEnabledAsync();
        await Page.RouteAsync("**/api/v1/jobs", route => route.AbortAsync());
        await Http.PostJsonAsync("/api/v1/jobs/j/pause", new { });
        await job.GetByTestId("job-pause").ClickAsync();
        await Expect(DashboardPage.ActionError(job).GetByTestId("message-code")).ToHaveTextAsync("job-already-paused");
        await Expect(DashboardPage.ActionError(job)).ToBeInViewportAsync();
        await Expect(Page.GetByTestId("message")).ToHaveCountAsync(0);
        await Page.UnrouteAllAsync();
        // Once the page sees the pause, Pause is off and Resume on.
        await Expect(job.GetByTestId("job-pause")).ToBeDisabledAsync();
        await Expect(job.GetByTestId("job-resume")).ToBeEnabledAsync();
        Dashboard.AssertNoScriptErrors();
    }
}
