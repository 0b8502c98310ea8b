using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Tests.Shared;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>A node on a block device (a loop device that Storage:Devices allows), added and shown by the dashboard.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardDeviceTests(ChromiumFixture chromium) : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-dashboard-device-").FullName;
    private LoopDevice? _loop;
    private KestrelBlockMirrorFactory? _factory;
    private DashboardPage? _dashboard;

    public async Task InitializeAsync()
    {
        _loop = await LoopDevice.AttachAsync(_dir, Size);
        _factory = new KestrelBlockMirrorFactory(new Dictionary<string, string?> { ["Storage:Devices:0"] = _loop.Device });
        _dashboard = await DashboardPage.OpenAsync(chromium, _factory.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (_dashboard is not null)
                await _dashboard.DisposeAsync();
            if (_factory is not null)
                await _factory.DisposeAsync();
        }
        finally
        {
            if (_loop is not null)
                await _loop.DisposeAsync();
            Directory.Delete(_dir, recursive: true);
        }
    }

    [LoopDeviceFact(browser: true)]
    public async Task A_device_is_opened_from_the_node_form_and_its_page_says_it_is_a_device()
    {
        var page = _dashboard!.Page;
        await page.GetByTestId("node-kind-open").CheckAsync();
        await page.GetByTestId("node-name").FillAsync("lv0");
        await page.GetByTestId("node-path").FillAsync(_loop!.Device);
        await page.GetByTestId("node-create").ClickAsync();

        var summary = _dashboard.NodeSummary;
        await Expect(summary.Locator("h2")).ToHaveTextAsync("lv0");
        await Expect(summary.GetByTestId("node-badge-device")).ToHaveTextAsync("block device");
        await Expect(summary.GetByTestId("node-driver")).ToHaveTextAsync("raw · host block device");
        await Expect(summary.GetByTestId("node-location")).ToHaveTextAsync(_loop.Device);
        await Expect(summary.GetByTestId("node-size")).ToHaveTextAsync("16 MiB");
        await Expect(summary.GetByTestId("node-allocated")).ToHaveTextAsync("whole device");
        // Devices are never deleted: the node can be removed, the device cannot be ticked away.
        await Expect(summary.Locator("[data-role=delete-image-label]")).ToBeHiddenAsync();

        await _dashboard.GotoAsync("#/nodes");
        await Expect(_dashboard.NodeRow("lv0").Locator("[data-col=driver]")).ToHaveTextAsync("raw · device");
        _dashboard.AssertNoScriptErrors();
    }
}
