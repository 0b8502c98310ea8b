using Microsoft.Playwright;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// A browser test: the service on a real loopback port (with an NBD server on a free port, and the
/// image check every 200 ms so a replaced file shows at once) and the dashboard open on it.
/// Concrete classes carry [Collection(BrowserCollection.Name)] (xunit does not inherit it).
/// </summary>
public abstract class DashboardTestBase(ChromiumFixture chromium) : IAsyncLifetime
{
    protected const long MiB = 1 << 20;

    protected KestrelBlockMirrorFactory Factory { get; } = new(new Dictionary<string, string?>
    {
        ["Nbd:Listen"] = "127.0.0.1:0",
        ["Storage:ImageCheckInterval"] = "00:00:00.200",
    });

    protected HttpClient Http { get; private set; } = null!;

    protected DashboardPage Dashboard { get; private set; } = null!;

    protected IPage Page => Dashboard.Page;

    public async Task InitializeAsync()
    {
        Http = Factory.CreateSocketClient();
        Dashboard = await DashboardPage.OpenAsync(chromium, Factory.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        await Dashboard.DisposeAsync();
        Http.Dispose();
        await Factory.DisposeAsync();
    }

    protected static string Invariant(long value) => value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
