using System.Net;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests;

/// <summary>
/// NBD exports are part of the stored state: a restart on the same database and image root serves
/// each again (same name, write access, bitmaps), or lists it as not served with the reason when its
/// node or a bitmap did not come back. Read back with qemu-img and our NBD client.
/// </summary>
public sealed class ExportRestartTests : IDisposable
{
    private const long Size = 8L << 20;
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-export-restart-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private static Dictionary<string, string?> WithNbd() => new() { ["Nbd:Listen"] = "127.0.0.1:0" };

    [QemuImgFact]
    public async Task A_restart_serves_every_export_again_with_its_name_access_and_bitmaps()
    {
        var data = ApiClient.Pattern(300_000, 7);
        JsonNodeList before;
        await using (var first = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", Size);
            await http.AddBitmapAsync("disk0", "p", persistent: true);
            await http.AddBitmapAsync("disk0", "frozen", persistent: true, disabled: true);
            await http.PostJsonAsync("/api/v1/exports", new { name = "rw", node = "disk0", writable = true, bitmaps = new[] { "p" } }, HttpStatusCode.Created);
            await http.PostJsonAsync("/api/v1/exports", new { name = "ro", node = "disk0", writable = false, bitmaps = new[] { "frozen" } }, HttpStatusCode.Created);
            await http.WriteAsync("disk0", 3 * G + 5, data);
            before = new(await http.GetJsonAsync("/api/v1/exports"));
        }

        await using var second = new BlockMirrorFactory(_dir, WithNbd());
        var h = second.CreateClient();
        var after = new JsonNodeList(await h.GetJsonAsync("/api/v1/exports"));
        Assert.Equal(["rw", "ro"], after.Names);
        foreach (var name in after.Names)
        {
            var (was, now) = (before[name], after[name]);
            Assert.True((bool)now["served"]!, name);
            Assert.Null(now["notServedCode"]);
            Assert.Equal((string)was["node"]!, (string)now["node"]!);
            Assert.Equal((bool)was["writable"]!, (bool)now["writable"]!);
            Assert.Equal(was["bitmaps"]!.ToJsonString(), now["bitmaps"]!.ToJsonString());
            Assert.Equal((DateTime)was["createdAt"]!, (DateTime)now["createdAt"]!);
            Assert.StartsWith("nbd://127.0.0.1:", (string)now["uri"]!, StringComparison.Ordinal);
        }
        // Held as before: the exposed bitmaps are busy, the node cannot be deleted.
        Assert.True((bool)(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["busy"]!);
        Assert.True((bool)(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/frozen"))["busy"]!);
        Assert.Equal(["ro", "rw"], (await h.GetJsonAsync("/api/v1/nodes/disk0"))["exports"]!.AsArray().Select(e => (string)e!).Order(StringComparer.Ordinal).ToArray());
        using (var r = await h.DeleteAsync("/api/v1/nodes/disk0"))
            await ApiClient.ExpectProblemAsync(r, 409, "node-busy");

        // qemu-img reads the restored export: the bytes written before the restart.
        var copy = Path.Combine(_dir, "copy.raw");
        var (code, output) = await QemuImgFactAttribute.RunAsync("convert", "-f", "raw", "-O", "raw", (string)after["ro"]["uri"]!, copy);
        Assert.True(code == 0, output);
        var read = await File.ReadAllBytesAsync(copy);
        Assert.Equal(Size, read.LongLength);
        Assert.Equal(data, read.AsSpan((int)(3 * G + 5), data.Length).ToArray());

        // The writable one still takes writes through the node's write path, and shows its bitmap's context.
        await using (var client = await NbdClient.ConnectAsync(NbdUri.Parse((string)after["rw"]["uri"]!), new NbdClientOptions { MetaContexts = ["qemu:dirty-bitmap:p"] }))
        {
            await client.WriteAsync(100 * G, new byte[10]);
            await client.FlushAsync();
            var dirty = (await client.BlockStatusAsync(0, Size))["qemu:dirty-bitmap:p"].Where(e => (e.Flags & 1) != 0).Select(e => (e.Offset, e.Length)).ToList();
            Assert.Contains((100 * G, G), dirty);
        }
        // A read-only export stays read-only.
        await using (var client = await NbdClient.ConnectAsync(NbdUri.Parse((string)after["ro"]["uri"]!)))
            Assert.True(client.ReadOnly);
    }

    [Fact]
    public async Task Deleting_an_export_after_a_restart_removes_it_for_good()
    {
        await using (var first = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", Size);
            await http.AddBitmapAsync("disk0", "p", persistent: true);
            await http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "disk0", bitmaps = new[] { "p" } }, HttpStatusCode.Created);
        }
        await using (var second = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = second.CreateClient();
            var uri = (string)(await http.GetJsonAsync("/api/v1/exports/e"))["uri"]!;
            await using var client = await NbdClient.ConnectAsync(NbdUri.Parse(uri));
            using (var r = await http.DeleteAsync("/api/v1/exports/e"))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
            Assert.False((bool)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["busy"]!);
            // Its clients are cut, and a new one is refused as for any unknown export.
            await Assert.ThrowsAnyAsync<Exception>(async () => await client.ReadAsync(0, new byte[512]));
            await Assert.ThrowsAnyAsync<Exception>(async () => await NbdClient.ConnectAsync(NbdUri.Parse(uri)));
        }
        await using var third = new BlockMirrorFactory(_dir, WithNbd());
        var h = third.CreateClient();
        Assert.Empty((await h.GetJsonAsync("/api/v1/exports"))["items"]!.AsArray());
        using (var r = await h.DeleteAsync("/api/v1/nodes/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    [Fact]
    public async Task An_export_whose_node_did_not_come_back_is_listed_not_served_until_removed()
    {
        await using (var first = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("gone", Size);
            await http.CreateNodeAsync("kept", Size);
            await http.PostJsonAsync("/api/v1/exports", new { name = "e-gone", node = "gone" }, HttpStatusCode.Created);
            await http.PostJsonAsync("/api/v1/exports", new { name = "e-kept", node = "kept" }, HttpStatusCode.Created);
        }
        File.Delete(Path.Combine(_dir, "images", "gone.img"));

        await using (var second = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = second.CreateClient();
            var list = new JsonNodeList(await http.GetJsonAsync("/api/v1/exports"));
            Assert.Equal(["e-gone", "e-kept"], list.Names);
            Assert.True((bool)list["e-kept"]["served"]!);
            var gone = await http.GetJsonAsync("/api/v1/exports/e-gone");
            Assert.False((bool)gone["served"]!);
            Assert.Equal("node-not-found", (string)gone["notServedCode"]!);
            Assert.Contains("'gone' was not restored", (string)gone["notServedReason"]!, StringComparison.Ordinal);
            Assert.Null(gone["uri"]);
            Assert.Equal("gone", (string)gone["node"]!);
            // The NBD server does not know it; its name stays taken until it is removed.
            var kept = NbdUri.Parse((string)list["e-kept"]["uri"]!);
            var unserved = NbdUri.Parse(((string)list["e-kept"]["uri"]!).Replace("/e-kept", "/e-gone", StringComparison.Ordinal));
            await using (var client = await NbdClient.ConnectAsync(kept))
                Assert.Equal(Size, client.Size);
            await Assert.ThrowsAnyAsync<Exception>(async () => await NbdClient.ConnectAsync(unserved));
            await http.PostProblemAsync("/api/v1/exports", new { name = "e-gone", node = "kept" }, 409, "export-exists");
            using (var r = await http.DeleteAsync("/api/v1/exports/e-gone"))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
            using (var r = await http.GetAsync("/api/v1/exports/e-gone"))
                await ApiClient.ExpectProblemAsync(r, 404, "export-not-found");
        }
        await using var third = new BlockMirrorFactory(_dir, WithNbd());
        Assert.Equal(["e-kept"], new JsonNodeList(await third.CreateClient().GetJsonAsync("/api/v1/exports")).Names);
    }

    [Fact]
    public async Task An_export_of_a_bitmap_that_does_not_outlive_the_process_is_not_served_after_a_restart()
    {
        await using (var first = new BlockMirrorFactory(_dir, WithNbd()))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", Size);
            await http.AddBitmapAsync("disk0", "transient");
            await http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "disk0", bitmaps = new[] { "transient" } }, HttpStatusCode.Created);
        }
        await using var second = new BlockMirrorFactory(_dir, WithNbd());
        var h = second.CreateClient();
        // Served without the context its clients asked for, it would tell them nothing changed.
        var e = await h.GetJsonAsync("/api/v1/exports/e");
        Assert.False((bool)e["served"]!);
        Assert.Equal("bitmap-not-found", (string)e["notServedCode"]!);
        Assert.Empty((await h.GetJsonAsync("/api/v1/nodes/disk0"))["exports"]!.AsArray());
        // The node is free: the export that is not served holds nothing.
        using (var r = await h.DeleteAsync("/api/v1/exports/e"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        using (var r = await h.DeleteAsync("/api/v1/nodes/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    [QemuImgFact]
    public async Task After_a_kill_9_the_export_is_served_again_and_qemu_img_reads_it()
    {
        var data = ApiClient.Pattern(70_000, 3);
        await using (var child = await ChildService.StartAsync(_dir))
        {
            await child.Http.CreateNodeAsync("disk0", Size);
            await child.Http.PostJsonAsync("/api/v1/exports", new { name = "disk0", node = "disk0" }, HttpStatusCode.Created);
            await child.Http.WriteAsync("disk0", G, data);
            // The 201 came after the record was committed: no clean stop is needed to keep the export.
            child.Kill();
            await child.WaitForKillAsync(TimeSpan.FromSeconds(30));
        }
        await using var again = await ChildService.StartAsync(_dir);
        var export = await again.Http.GetJsonAsync("/api/v1/exports/disk0");
        Assert.True((bool)export["served"]!);
        var copy = Path.Combine(_dir, "copy.raw");
        var (code, output) = await QemuImgFactAttribute.RunAsync("convert", "-f", "raw", "-O", "raw", $"nbd+unix:///disk0?socket={again.NbdSocket}", copy);
        Assert.True(code == 0, output);
        Assert.Equal(data, (await File.ReadAllBytesAsync(copy)).AsSpan((int)G, data.Length).ToArray());
    }

    /// <summary>GET /exports' items by name, in the listed order.</summary>
    private sealed class JsonNodeList(System.Text.Json.Nodes.JsonNode list)
    {
        private readonly List<System.Text.Json.Nodes.JsonNode> _items = [.. list["items"]!.AsArray().Select(i => i!)];

        public string[] Names => [.. _items.Select(i => (string)i["name"]!)];

        public System.Text.Json.Nodes.JsonNode this[string name] => _items.Single(i => (string)i["name"]! == name);
    }
}
