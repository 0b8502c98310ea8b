using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests;

public sealed class ExportTests() : ServiceTest(WithNbd())
{
    private const long G = 65536;

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", 16L << 20);
        await Http.AddBitmapAsync("disk0", "b0");
    }

    [Fact]
    public async Task Writes_through_an_export_take_the_write_path()
    {
        var export = await Http.PostJsonAsync("/api/v1/exports", new { name = "disk0", node = "disk0", writable = true, bitmaps = new[] { "b0" } }, HttpStatusCode.Created);
        var uri = (string)export["uri"]!;
        Assert.StartsWith("nbd://127.0.0.1:", uri, StringComparison.Ordinal);
        Assert.True((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["busy"]!);
        Assert.Equal(["disk0"], (await Http.GetJsonAsync("/api/v1/nodes/disk0"))["exports"]!.AsArray().Select(e => (string)e!).ToArray());

        await using (var client = await NbdClient.ConnectAsync(NbdUri.Parse(uri), new NbdClientOptions { MetaContexts = ["base:allocation", "qemu:dirty-bitmap:b0"] }))
        {
            var data = ApiClient.Pattern(5000, 1);
            await client.WriteAsync(3 * G + 10, data);
            await client.FlushAsync();
            Assert.Equal(data, await Http.ReadAsync("disk0", 3 * G + 10, data.Length));
            var status = await client.BlockStatusAsync(0, 16L << 20);
            var dirty = status["qemu:dirty-bitmap:b0"].Where(e => (e.Flags & 1) != 0).ToList();
            Assert.Single(dirty);
        }
        Assert.Equal([(3 * G, G)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/extents")));

        // Busy while exported: the node cannot be deleted, the bitmap not cleared.
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0"))
            await ApiClient.ExpectProblemAsync(r, 409, "node-busy");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b0/clear", new { }, 409, "bitmap-busy");
        await Http.PostProblemAsync("/api/v1/exports", new { name = "disk0", node = "disk0" }, 409, "export-exists");

        using (var r = await Http.DeleteAsync("/api/v1/exports/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        Assert.False((bool)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["busy"]!);
        using (var r = await Http.GetAsync("/api/v1/exports/disk0"))
            await ApiClient.ExpectProblemAsync(r, 404, "export-not-found");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    [Fact]
    public async Task Export_refusals_have_their_codes()
    {
        await Http.PostProblemAsync("/api/v1/exports", new { name = "x", node = "nope" }, 404, "node-not-found");
        await Http.PostProblemAsync("/api/v1/exports", new { name = "x", node = "disk0", bitmaps = new[] { "nope" } }, 404, "bitmap-not-found");
        await Http.PostProblemAsync("/api/v1/exports", new { name = "bad name", node = "disk0" }, 400, "invalid-name");
        await Http.PostProblemAsync("/api/v1/exports", new { node = "disk0" }, 400, "invalid-request");
        using (var r = await Http.DeleteAsync("/api/v1/exports/nope"))
            await ApiClient.ExpectProblemAsync(r, 404, "export-not-found");
        var list = await Http.GetJsonAsync("/api/v1/exports");
        Assert.Empty(list["items"]!.AsArray());
    }

    [Fact]
    public async Task A_mirror_sees_writes_made_through_an_export()
    {
        await using var events = await EventWaiter.StartAsync(Factory.CreateClient());
        await Http.CreateNodeAsync("copy", 16L << 20);
        var export = await Http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "disk0" }, HttpStatusCode.Created);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "copy" }, HttpStatusCode.Created);
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "j");
        var data = ApiClient.Pattern(100_000, 4);
        await using (var client = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!)))
            await client.WriteAsync(1_000_003, data);
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { });
        await events.WaitStatusAsync("j", "null");
        Assert.Equal(data, await Http.ReadAsync("copy", 1_000_003, data.Length));
    }
}
