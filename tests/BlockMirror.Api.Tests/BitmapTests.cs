using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Core;

namespace BlockMirror.Api.Tests;

public sealed class BitmapTests : ServiceTest
{
    private const long G = 65536;

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", 64L << 20);
    }

    [Fact]
    public async Task Add_returns_the_bitmap_with_defaults()
    {
        using var response = await Http.PostAsJsonAsync("/api/v1/nodes/disk0/bitmaps", new { name = "b0" });
        var b = await ApiClient.ExpectAsync(response, HttpStatusCode.Created);
        Assert.Equal("/api/v1/nodes/disk0/bitmaps/b0", response.Headers.Location?.OriginalString);
        Assert.Equal("disk0", (string?)b["node"]);
        Assert.Equal(G, (long)b["granularity"]!);
        Assert.Equal(0, (long)b["count"]!);
        Assert.True((bool)b["recording"]!);
        Assert.False((bool)b["busy"]!);
        Assert.False((bool)b["persistent"]!);
        Assert.False((bool)b["inconsistent"]!);
        var node = await Http.GetJsonAsync("/api/v1/nodes/disk0");
        Assert.Equal(["b0"], node["bitmaps"]!.AsArray().Select(x => (string)x!).ToArray());
    }

    [Fact]
    public async Task Writes_mark_every_enabled_bitmap_rounded_outward()
    {
        await Http.AddBitmapAsync("disk0", "b64k");
        await Http.AddBitmapAsync("disk0", "b4k", 4096);
        await Http.AddBitmapAsync("disk0", "off", disabled: true);

        // 10 bytes straddling a 64 KiB boundary dirty two 64 KiB granules and two 4 KiB granules.
        await Http.WriteAsync("disk0", G - 5, new byte[10]);
        var b64 = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b64k");
        Assert.Equal(2 * G, (long)b64["count"]!);
        Assert.Equal([(0L, 2 * G)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b64k/extents")));
        Assert.Equal([(G - 4096, 8192L)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b4k/extents")));
        var off = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/off");
        Assert.Equal(0, (long)off["count"]!);
        Assert.False((bool)off["recording"]!);

        // zero and discard are writes too.
        await Http.PostJsonAsync("/api/v1/nodes/disk0/zero", new { offset = 10 * G, length = 1 }, HttpStatusCode.NoContent);
        await Http.PostJsonAsync("/api/v1/nodes/disk0/discard", new { offset = 20 * G, length = G }, HttpStatusCode.NoContent);
        Assert.Equal([(0L, 2 * G), (10 * G, G), (20 * G, G)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b64k/extents")));
        // extents can be asked for a window and are clipped to it.
        Assert.Equal([(G, G)], ApiClient.Extents(await Http.GetJsonAsync($"/api/v1/nodes/disk0/bitmaps/b64k/extents?offset={G}&length={2 * G}")));
    }

    [Fact]
    public async Task Count_clips_the_last_granule_to_the_node_size()
    {
        await Http.CreateNodeAsync("odd", 100 * 512);
        await Http.AddBitmapAsync("odd", "b");
        await Http.WriteAsync("odd", 0, new byte[1]);
        Assert.Equal(100 * 512, (long)(await Http.GetJsonAsync("/api/v1/nodes/odd/bitmaps/b"))["count"]!);
    }

    [Fact]
    public async Task Clear_enable_disable_and_sha256()
    {
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.AddBitmapAsync("disk0", "b1");
        var empty = (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/sha256"))["sha256"];
        await Http.WriteAsync("disk0", 5 * G, new byte[100]);
        var sha0 = (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/sha256"))["sha256"];
        var sha1 = (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b1/sha256"))["sha256"];
        Assert.Equal(64, sha0!.Length);
        Assert.Equal(sha0, sha1);
        Assert.NotEqual(empty, sha0);

        var disabled = await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/disable", new { });
        Assert.False((bool)disabled["recording"]!);
        await Http.WriteAsync("disk0", 9 * G, new byte[100]);
        Assert.Equal(G, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["count"]!);
        var enabled = await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/enable", new { });
        Assert.True((bool)enabled["recording"]!);

        var cleared = await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/b1/clear", new { });
        Assert.Equal(0, (long)cleared["count"]!);
        Assert.Equal(empty, (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b1/sha256"))["sha256"]);
    }

    [Fact]
    public async Task Merge_ors_sources_of_any_granularity_and_other_nodes()
    {
        await Http.CreateNodeAsync("disk1", 64L << 20);
        await Http.AddBitmapAsync("disk0", "target");
        await Http.AddBitmapAsync("disk0", "small", 4096);
        await Http.AddBitmapAsync("disk1", "other", 1 << 20, disabled: true);
        await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/target/disable", new { });
        await Http.WriteAsync("disk0", 3 * G + 100, new byte[10]);
        await Http.PostJsonAsync("/api/v1/nodes/disk1/bitmaps/other/enable", new { });
        await Http.WriteAsync("disk1", 40L << 20, new byte[1]);

        var merged = await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/target/merge",
            new { sources = new object[] { new { name = "small" }, new { node = "disk1", name = "other" } } });
        // The 4 KiB granule dirties its 64 KiB granule; the 1 MiB granule dirties 16 target granules.
        Assert.Equal(17 * G, (long)merged["count"]!);
        Assert.Equal([(3 * G, G), (40L << 20, 1L << 20)], ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/target/extents")));
    }

    [Fact]
    public async Task Merge_refusals_leave_the_target_unchanged()
    {
        await Http.CreateNodeAsync("small", 1 << 20);
        await Http.AddBitmapAsync("small", "s");
        await Http.AddBitmapAsync("disk0", "t");
        await Http.AddBitmapAsync("disk0", "a");
        await Http.WriteAsync("disk0", 0, new byte[1]);
        await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/t/clear", new { });
        var before = (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/t/sha256"))["sha256"];

        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/t/merge", new { sources = new object[] { new { name = "a" }, new { node = "small", name = "s" } } }, 400, "size-mismatch");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/t/merge", new { sources = new object[] { new { name = "a" }, new { name = "missing" } } }, 404, "bitmap-not-found");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/t/merge", new { sources = new object[] { new { node = "nope", name = "a" } } }, 404, "node-not-found");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/t/merge", new { }, 400, "invalid-request");
        Assert.Equal(before, (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/t/sha256"))["sha256"]);
    }

    [Fact]
    public async Task Add_refusals_have_their_codes()
    {
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps", new { name = "b0" }, 409, "bitmap-exists");
        await Http.PostProblemAsync("/api/v1/nodes/nope/bitmaps", new { name = "b0" }, 404, "node-not-found");
        foreach (var g in new[] { 0L, 256, 1000, 65537, 1L << 32, -65536 })
            await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps", new { name = "bx", granularity = g }, 400, "invalid-granularity");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps", new { name = "bad name" }, 400, "invalid-name");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps", new { granularity = 512 }, 400, "invalid-request");
        // The extremes of the range are accepted.
        await Http.AddBitmapAsync("disk0", "g512", 512);
        await Http.AddBitmapAsync("disk0", "g2g", 1L << 31);
    }

    [Fact]
    public async Task Unknown_bitmaps_are_404_everywhere()
    {
        foreach (var url in new[] { "", "/extents", "/sha256" })
        {
            using var r = await Http.GetAsync($"/api/v1/nodes/disk0/bitmaps/nope{url}");
            await ApiClient.ExpectProblemAsync(r, 404, "bitmap-not-found");
        }
        foreach (var verb in new[] { "clear", "enable", "disable" })
            await Http.PostProblemAsync($"/api/v1/nodes/disk0/bitmaps/nope/{verb}", new { }, 404, "bitmap-not-found");
        using var d = await Http.DeleteAsync("/api/v1/nodes/disk0/bitmaps/nope");
        await ApiClient.ExpectProblemAsync(d, 404, "bitmap-not-found");
    }

    [Fact]
    public async Task Guards_apply_in_QEMU_order()
    {
        // Make the guard states directly in the block layer: busy (a job or export holds it),
        // read-only and inconsistent have no REST verb of their own.
        await Http.AddBitmapAsync("disk0", "b");
        var layer = (BlockLayer)Factory.Services.GetService(typeof(BlockLayer))!;
        var bitmap = layer.GetNode("disk0").GetBitmap("b");

        bitmap.Busy = true;
        bitmap.ReadOnly = true;
        bitmap.Inconsistent = true;
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/clear", new { }, 409, "bitmap-busy");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/enable", new { }, 409, "bitmap-busy");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0/bitmaps/b"))
            await ApiClient.ExpectProblemAsync(r, 409, "bitmap-busy");

        bitmap.Busy = false;
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/clear", new { }, 409, "bitmap-read-only");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/merge", new { sources = new object[] { } }, 409, "bitmap-read-only");
        // enable/disable allow read-only bitmaps: the next guard, inconsistent, refuses.
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/disable", new { }, 409, "bitmap-inconsistent");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0/bitmaps/b"))
            await ApiClient.ExpectProblemAsync(r, 409, "bitmap-read-only");

        bitmap.ReadOnly = false;
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/b/clear", new { }, 409, "bitmap-inconsistent");
        await Http.AddBitmapAsync("disk0", "t");
        await Http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/t/merge", new { sources = new object[] { new { name = "b" } } }, 409, "bitmap-inconsistent");
        // An inconsistent bitmap can always be removed.
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0/bitmaps/b"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    [Fact]
    public async Task Deleting_a_node_removes_its_bitmaps()
    {
        await Http.AddBitmapAsync("disk0", "b0");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        var again = await Http.PostJsonAsync("/api/v1/nodes", new { name = "disk0", driver = "raw", path = "disk0.img" }, HttpStatusCode.Created);
        Assert.Empty(again["bitmaps"]!.AsArray());
    }
}
