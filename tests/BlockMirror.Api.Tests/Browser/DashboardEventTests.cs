using System.Globalization;
using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>The events view: a readable list with local times, not raw JSON.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardEventTests(ChromiumFixture chromium) : DashboardTestBase(chromium)
{
    [BrowserFact]
    public async Task Events_are_listed_newest_first_with_local_times_and_sentences()
    {
        await Dashboard.GotoAsync("#/events");
        await Http.CreateNodeAsync("disk0", 4 * MiB);
        await Http.CreateNodeAsync("disk1", 4 * MiB);
        await Http.WriteAsync("disk0", 0, ApiClient.Pattern(4 * (int)MiB, 5));
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "job0", device = "disk0", target = "disk1", sync = "full" }, HttpStatusCode.Created);

        var events = Page.GetByTestId("event");
        var ready = Page.Locator("[data-testid=event][data-event=BLOCK_JOB_READY]");
        await Expect(ready).ToHaveCountAsync(1);
        await Expect(ready.GetByTestId("event-text")).ToHaveTextAsync("job0 is ready: 4 MiB in sync, complete or cancel it");
        await Http.PostJsonAsync("/api/v1/jobs/job0/complete", new { });
        var completed = Page.Locator("[data-testid=event][data-event=BLOCK_JOB_COMPLETED]");
        await Expect(completed.GetByTestId("event-text")).ToHaveTextAsync("job0 completed at 4 MiB of 4 MiB");
        await Expect(events.First).ToHaveAttributeAsync("data-event", "JOB_STATUS_CHANGE");
        await Expect(events.First.GetByTestId("event-text")).ToHaveTextAsync("job0 was dismissed (status null)");

        // Newest first: ids go down the list; sentences, not JSON.
        var ids = await events.EvaluateAllAsync<long[]>("es => es.map(e => Number(e.dataset.id))");
        Assert.True(ids.Length >= 8, $"only {ids.Length} events");
        Assert.Equal(ids.OrderDescending(), ids);
        Assert.DoesNotContain(await events.GetByTestId("event-text").AllTextContentsAsync(), t => t.Contains('{', StringComparison.Ordinal));
        var statuses = await Page.Locator("[data-testid=event][data-event=JOB_STATUS_CHANGE] [data-testid=event-text]").AllTextContentsAsync();
        Assert.Equal(["job0 is now created", "job0 is now running", "job0 is now ready", "job0 is now waiting", "job0 is now pending", "job0 is now concluded", "job0 was dismissed (status null)"],
            statuses.Reverse());

        // Each time is the event's UTC timestamp in the browser's time zone, to the millisecond.
        var zone = TimeZoneInfo.FindSystemTimeZoneById(DashboardPage.TimeZone);
        foreach (var time in await events.GetByTestId("event-time").AllAsync())
        {
            var utc = DateTime.Parse((await time.GetAttributeAsync("datetime"))!, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal);
            Assert.Equal(TimeZoneInfo.ConvertTimeFromUtc(utc, zone).ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture), await time.TextContentAsync());
        }
        await Dashboard.ScreenshotAsync("dashboard-events.png");
        Dashboard.AssertNoScriptErrors();
    }
}
