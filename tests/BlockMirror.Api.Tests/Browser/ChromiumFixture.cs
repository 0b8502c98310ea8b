using Microsoft.Playwright;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>
/// One headless Chromium for the browser collection. It is launched on first use, not in
/// InitializeAsync, so a run where every browser test is skipped never touches Playwright.
/// </summary>
public sealed class ChromiumFixture : IAsyncLifetime
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private IPlaywright? _playwright;
    private IBrowser? _browser;

    public async Task<IBrowser> GetBrowserAsync()
    {
        await _gate.WaitAsync();
        try
        {
            if (_browser is not null)
                return _browser;
            if (!BrowserEnvironment.Available)
                throw new InvalidOperationException(BrowserEnvironment.MissingMessage);
            // Playwright's 5 s default is short for a 2-core CI machine running other suites at once.
            Assertions.SetDefaultExpectTimeout(30_000);
            _playwright = await Playwright.CreateAsync();
            _browser = await _playwright.Chromium.LaunchAsync(new()
            {
                ExecutablePath = BrowserEnvironment.ChromiumPath,
                Headless = true,
                Args =
                [
                    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                ],
            });
            return _browser;
        }
        finally
        {
            _gate.Release();
        }
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_browser is not null)
            await _browser.CloseAsync();
        _playwright?.Dispose();
        _gate.Dispose();
    }
}
