using Microsoft.Playwright;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// The dashboard open in a fresh browser context. Uncaught script errors are collected, so a
/// test fails on a broken page even where its assertions would happen to pass.
/// </summary>
public sealed class DashboardPage : IAsyncDisposable
{
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
        var context = await browser.NewContextAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 }, BaseURL = baseAddress.ToString() });
        context.SetDefaultTimeout(30_000);
        var dashboard = new DashboardPage(context, await context.NewPageAsync());
        await dashboard.Page.GotoAsync("/");
        // The first refresh has rendered once the event stream is open and the nodes table is filled in.
        await Assertions.Expect(dashboard.Page.GetByTestId("events-status")).ToHaveAttributeAsync("data-state", "open");
        return dashboard;
    }

    public ILocator NodeRow(string node) => Page.Locator($"[data-testid=node-row][data-node='{node}']");

    public ILocator BitmapGroup(string node) => Page.Locator($"[data-testid=node-bitmaps][data-node='{node}']");

    public ILocator Bitmap(string node, string bitmap) => BitmapGroup(node).Locator($"[data-testid=bitmap][data-bitmap='{bitmap}']");

    public ILocator Job(string id) => Page.Locator($"[data-testid=job][data-job='{id}']");

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
