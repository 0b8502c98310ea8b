using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace BlockMirror.Api.Tests.Browser;

/// <summary>Adding nodes other than new raw files, NBD exports, and what a node page says when its image was replaced.</summary>
[Collection(BrowserCollection.Name)]
public sealed class DashboardNodeTests(ChromiumFixture chromium) : DashboardTestBase(chromium)
{
    [BrowserFact]
    public async Task A_qcow2_image_on_a_backing_file_is_created_from_the_form_and_its_page_shows_format_and_chain()
    {
        await Http.CreateNodeAsync("maker", 8 * MiB, "tmpl/base.img");
        using (var removed = await Http.DeleteAsync("/api/v1/nodes/maker"))
            Assert.Equal(HttpStatusCode.NoContent, removed.StatusCode);

        await Page.GetByTestId("node-kind-create").CheckAsync();
        // The qcow2 members show only for qcow2.
        await Expect(Page.GetByTestId("node-backing")).ToBeHiddenAsync();
        await Page.GetByTestId("node-format").SelectOptionAsync("qcow2");
        await Expect(Page.GetByTestId("node-backing")).ToBeVisibleAsync();
        await Page.GetByTestId("node-name").FillAsync("vm1");
        await Expect(Page.GetByTestId("node-path")).ToHaveAttributeAsync("placeholder", "vm1.qcow2");
        await Page.GetByTestId("node-size").FillAsync("8M");
        await Page.GetByTestId("node-backing").FillAsync("tmpl/base.img");
        await Page.GetByTestId("node-cluster-size").FillAsync("4K");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("vm1");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-format")).ToHaveTextAsync("qcow2");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-backing")).ToHaveTextAsync("tmpl/base.img (raw)");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-location")).ToHaveTextAsync("vm1.qcow2");
        var node = await Http.GetJsonAsync("/api/v1/nodes/vm1");
        Assert.Equal("qcow2", (string?)node["driver"]);
        Assert.Equal("tmpl/base.img", (string?)node["backing"]![0]!["path"]);
    }

    [BrowserFact]
    public async Task A_raw_image_created_with_direct_IO_from_the_form_shows_its_cache_mode()
    {
        await Page.GetByTestId("node-kind-create").CheckAsync();
        // A raw node's option: hidden for qcow2.
        await Page.GetByTestId("node-format").SelectOptionAsync("qcow2");
        await Expect(Page.GetByTestId("node-direct")).ToBeHiddenAsync();
        await Page.GetByTestId("node-format").SelectOptionAsync("raw");
        await Page.GetByTestId("node-name").FillAsync("fast");
        await Page.GetByTestId("node-size").FillAsync("8M");
        await Page.GetByTestId("node-direct").CheckAsync();
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("fast");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-cache")).ToHaveTextAsync("direct (O_DIRECT, bypasses the page cache)");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-badge-direct")).ToBeVisibleAsync();
        Assert.True((bool)(await Http.GetJsonAsync("/api/v1/nodes/fast"))["cache"]!["direct"]!);
        // A default node says it uses the page cache.
        await Http.CreateNodeAsync("plain", 8 * MiB);
        await Dashboard.GotoAsync("#/nodes/plain");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-cache")).ToHaveTextAsync("host page cache");
    }

    [BrowserFact]
    public async Task Existing_image_is_opened_exported_and_read_back_through_an_nbd_node()
    {
        // An image file that exists under the root: made by a node that is then removed (the file stays).
        var data = ApiClient.Pattern((int)MiB, 42);
        await Http.CreateNodeAsync("maker", 8 * MiB, "vm/base.img");
        await Http.WriteAsync("maker", 2 * MiB, data);
        using (var removed = await Http.DeleteAsync("/api/v1/nodes/maker"))
            Assert.Equal(HttpStatusCode.NoContent, removed.StatusCode);

        await Page.GetByTestId("node-kind-open").CheckAsync();
        await Expect(Page.GetByTestId("node-size")).ToBeHiddenAsync();
        await Page.GetByTestId("node-name").FillAsync("disk0");
        await Page.GetByTestId("node-path").FillAsync("vm/base.img");
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("disk0");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-size")).ToHaveTextAsync("8 MiB");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-location")).ToHaveTextAsync("vm/base.img");

        // Exports: a read-only export of a recording bitmap is refused (its clients would see it
        // change), and the refusal shows in the export form.
        await Http.AddBitmapAsync("disk0", "b0");
        var exports = Page.GetByTestId("node-exports");
        await Expect(exports.GetByTestId("export-name")).ToHaveValueAsync("disk0");
        await exports.GetByTestId("export-writable").UncheckAsync();
        await exports.Locator("[data-testid=export-bitmap] input[value=b0]").CheckAsync();
        await exports.GetByTestId("export-add").ClickAsync();
        var formError = DashboardPage.ActionError(exports.GetByTestId("export-form"));
        await Expect(formError.GetByTestId("message-code")).ToHaveTextAsync("bitmap-enabled");
        await Expect(Page.GetByTestId("export-row")).ToHaveCountAsync(0);

        await exports.GetByTestId("export-writable").CheckAsync();
        await exports.GetByTestId("export-add").ClickAsync();
        var row = Dashboard.Export("disk0");
        await Expect(row.Locator("[data-col=access]")).ToHaveTextAsync("read-write");
        await Expect(row.Locator("[data-col=bitmaps]")).ToHaveTextAsync("b0");
        var uri = (string)(await Http.GetJsonAsync("/api/v1/exports/disk0"))["uri"]!;
        Assert.StartsWith("nbd://127.0.0.1:", uri, StringComparison.Ordinal);
        await Expect(row.Locator("[data-col=uri]")).ToHaveTextAsync(uri);
        await Expect(formError).ToBeHiddenAsync();
        // An exported bitmap is busy: its commands are off.
        await Expect(Dashboard.Bitmap("b0").GetByTestId("badge-busy")).ToBeVisibleAsync();
        await Expect(Dashboard.Bitmap("b0").GetByTestId("bitmap-clear")).ToBeDisabledAsync();
        await Dashboard.ScreenshotAsync("dashboard-exports.png");

        // An NBD node on that export, read-only: the data read through it is the image's.
        await Dashboard.GotoAsync("#/nodes");
        await Page.GetByTestId("node-kind-nbd").CheckAsync();
        await Expect(Page.GetByTestId("node-path")).ToBeHiddenAsync();
        await Page.GetByTestId("node-name").FillAsync("remote");
        await Page.GetByTestId("node-uri").FillAsync(uri);
        await Page.GetByTestId("node-read-only").CheckAsync();
        await Page.GetByTestId("node-create").ClickAsync();
        await Expect(Dashboard.NodeSummary.Locator("h2")).ToHaveTextAsync("remote");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-driver")).ToHaveTextAsync("nbd (read-only)");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-location")).ToHaveTextAsync(uri);
        await Expect(Dashboard.NodeSummary.GetByTestId("node-size")).ToHaveTextAsync("8 MiB");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-badge-read-only")).ToBeVisibleAsync();
        // No image file to delete for an nbd node.
        await Expect(Dashboard.NodeSummary.GetByTestId("node-delete-image")).ToBeHiddenAsync();
        // A plain connection says it is not encrypted, and has no server identity to show.
        await Expect(Dashboard.NodeSummary.GetByTestId("node-tls")).ToHaveTextAsync("plain TCP (not encrypted)");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-peer")).ToBeHiddenAsync();
        Assert.Equal(data, await Http.ReadAsync("remote", 2 * MiB, MiB));

        await Dashboard.NodeSummary.GetByTestId("node-delete").ClickAsync();
        await Expect(Dashboard.NodeRow("remote")).ToHaveCountAsync(0);

        // The export goes from its row; the node can then be removed.
        await Dashboard.GotoAsync("#/nodes/disk0");
        await Expect(Dashboard.NodeSummary.GetByTestId("node-delete")).ToBeDisabledAsync();
        await row.GetByTestId("export-remove").ClickAsync();
        await Expect(Page.GetByTestId("export-row")).ToHaveCountAsync(0);
        Assert.Empty((await Http.GetJsonAsync("/api/v1/exports"))["items"]!.AsArray());
        await Expect(Dashboard.Bitmap("b0").GetByTestId("bitmap-clear")).ToBeEnabledAsync();
        await Expect(Dashboard.NodeSummary.GetByTestId("node-delete")).ToBeEnabledAsync();
        Dashboard.AssertNoScriptErrors();
    }

    [BrowserFact]
    public async Task Replaced_image_and_inconsistent_bitmap_say_why_and_offer_only_removal()
    {
        await Http.CreateNodeAsync("disk0", MiB, "disk0.img");
        await Http.AddBitmapAsync("disk0", "p", persistent: true);
        await Http.WriteAsync("disk0", 0, new byte[4096]);
        await Dashboard.GotoAsync("#/nodes/disk0");
        var bitmap = Dashboard.Bitmap("p");
        await Expect(bitmap.GetByTestId("badge-persistent")).ToBeVisibleAsync();
        await Expect(bitmap.GetByTestId("bitmap-inconsistent-reason")).ToBeHiddenAsync();

        // Another file renamed over the node's path (the node keeps the old one open).
        var replacement = Path.Combine(Factory.ImageRoot, "new.img");
        await File.WriteAllBytesAsync(replacement, new byte[MiB]);
        File.Move(replacement, Path.Combine(Factory.ImageRoot, "disk0.img"), overwrite: true);

        var node = await WaitForReplacedAsync();
        await Expect(Dashboard.NodeSummary.GetByTestId("node-badge-replaced")).ToBeVisibleAsync();
        await Expect(Dashboard.NodeSummary.GetByTestId("node-replaced")).ToContainTextAsync((string)node["imageReplacedReason"]!);
        await Expect(Dashboard.NavItem("disk0")).ToHaveAttributeAsync("data-state", "replaced");

        var reason = (string)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["inconsistentReason"]!;
        await Expect(bitmap.GetByTestId("badge-inconsistent")).ToBeVisibleAsync();
        await Expect(bitmap.GetByTestId("badge-inconsistent")).ToHaveAttributeAsync("title", reason);
        await Expect(bitmap.GetByTestId("bitmap-inconsistent-reason")).ToContainTextAsync(reason);
        foreach (var verb in new[] { "clear", "enable", "disable", "merge" })
            await Expect(bitmap.GetByTestId($"bitmap-{verb}")).ToBeDisabledAsync();
        await Expect(bitmap.GetByTestId("bitmap-remove")).ToBeEnabledAsync();
        await Dashboard.ScreenshotAsync("dashboard-inconsistent.png");

        // What the page offers is what the service accepts: an inconsistent bitmap can be removed.
        await bitmap.GetByTestId("bitmap-remove").ClickAsync();
        await Expect(bitmap).ToHaveCountAsync(0);
        await Expect(Page.Locator("[data-testid=action-error]:visible")).ToHaveCountAsync(0);
        Dashboard.AssertNoScriptErrors();
    }

    private async Task<System.Text.Json.Nodes.JsonNode> WaitForReplacedAsync()
    {
        // The service compares the open file with the path every 200 ms here (Storage:ImageCheckInterval).
        for (var i = 0; i < 200; i++)
        {
            var node = await Http.GetJsonAsync("/api/v1/nodes/disk0");
            if ((bool)node["imageReplaced"]!)
                return node;
            await Task.Delay(50);
        }
        throw new TimeoutException("the replaced image was never seen");
    }
}
