using Microsoft.Playwright;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// The dashboard open in a fresh browser context. Uncaught script errors are collected, so a
/// test fails on a broken page even where its assertions would happen to pass.
/// </summary>
public sealed class DashboardPage : IAsyncDisposable
{
    /// <summary>
    /// The browser's time zone: not UTC (+05:30, no daylight saving), so a time shown without
    /// converting the API's UTC timestamps to local time cannot pass for one that was.
    /// </summary>
    public const string TimeZone = "Asia/Kolkata";

    private readonly IBrowserContext _context;
    private readonly List<string> _scriptErrors = [];

    private DashboardPage(IBrowserContext context, IPage page)
    {
        _context = context;
        Page = page;
        page.PageError += (_, error) =>
        {
            lock (_scriptErrors)
                _scriptErrors.Add(error);
        };
    }

    public IPage Page { get; }

    public static async Task<DashboardPage> OpenAsync(ChromiumFixture chromium, Uri baseAddress)
    {
        var browser = await chromium.GetBrowserAsync();
        var context = await browser.NewContextAsync(new()
        {
            ViewportSize = new() { Width = 1280, Height = 900 },
            BaseURL = baseAddress.ToString(),
            TimezoneId = TimeZone,
        });
        context.SetDefaultTimeout(30_000);
        var dashboard = new DashboardPage(context, await context.NewPageAsync());
        await dashboard.Page.GotoAsync("/");
        // The first refresh has rendered once the event stream is open.
        await Assertions.Expect(dashboard.Page.GetByTestId("events-status")).ToHaveAttributeAsync("data-state", "open");
        return dashboard;
    }

    /// <summary>Opens a view by its address (#/nodes, #/nodes/{name}, #/jobs, #/events) and waits until it shows.</summary>
    public async Task GotoAsync(string hash)
    {
        await Page.EvaluateAsync("h => { location.hash = h; }", hash);
        var view = hash switch
        {
            _ when hash.StartsWith("#/nodes/", StringComparison.Ordinal) => "node",
            "#/jobs" => "jobs",
            "#/events" => "events",
            _ => "nodes",
        };
        await Assertions.Expect(Page.Locator("body")).ToHaveAttributeAsync("data-view", view);
    }

    /// <summary>The view shown now (the others are hidden but keep their elements).</summary>
    public ILocator View => Page.Locator("main > .view:not([hidden])");

    public ILocator NodeRow(string node) => Page.Locator($"[data-testid=node-row][data-node='{node}']");

    public ILocator NavItem(string node) => Page.Locator($"[data-testid=node-nav-item][data-node='{node}']");

    /// <summary>The node page's parts (the page shows one node at a time).</summary>
    public ILocator NodeSummary => Page.GetByTestId("node-summary");

    public ILocator Bitmap(string bitmap) => Page.Locator($"[data-testid=node-bitmaps] [data-testid=bitmap][data-bitmap='{bitmap}']");

    public ILocator Export(string name) => Page.Locator($"[data-testid=export-row][data-export='{name}']");

    /// <summary>A job's card in the view shown now (the jobs view or a node page).</summary>
    public ILocator Job(string id) => View.Locator($"[data-testid=job][data-job='{id}']");

    public ILocator HistoryRow(string id) => Page.Locator($"[data-testid=history-row][data-job='{id}']");

    /// <summary>The error box of the action scope <paramref name="scope"/> (a form, a bitmap, a job card...).</summary>
    public static ILocator ActionError(ILocator scope) => scope.Locator("[data-testid=action-error]").First;

    /// <summary>Writes docs/screenshots/<paramref name="name"/> when BLOCKMIRROR_SCREENSHOTS=1.</summary>
    public async Task ScreenshotAsync(string name)
    {
        if (!BrowserEnvironment.ScreenshotsEnabled)
            return;
        Directory.CreateDirectory(BrowserEnvironment.ScreenshotDirectory);
        await Page.ScreenshotAsync(new() { Path = Path.Combine(BrowserEnvironment.ScreenshotDirectory, name), FullPage = true });
    }

    public void AssertNoScriptErrors()
    {
        lock (_scriptErrors)
            Assert.True(_scriptErrors.Count == 0, "Script errors on the dashboard: " + string.Join(" | ", _scriptErrors));
    }

    public async ValueTask DisposeAsync() => await _context.CloseAsync();
}
