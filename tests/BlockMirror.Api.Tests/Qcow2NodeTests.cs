using System.Buffers.Binary;
using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Api.Tests;

/// <summary>qcow2 nodes through the REST API: create, open, backing chains, refusals, the node view, mirrors.</summary>
public sealed class Qcow2NodeTests() : ServiceTest(watchEvents: true)
{
    private const long M = 1L << 20;
    private const long Size = 8 * M;

    private Task<JsonNode> CreateQcow2Async(string name, string path, long size = Size, object? extra = null) =>
        Http.PostJsonAsync("/api/v1/nodes", new { name, driver = "qcow2", path, create = extra ?? new { size } }, HttpStatusCode.Created);

    private string Full(string relative) => Path.Combine(Factory.ImageRoot, relative);

    private static string[] Chain(JsonNode node) =>
        [.. node["backing"]!.AsArray().Select(b => $"{(string)b!["path"]!}:{(string)b["format"]!}")];

    [Fact]
    public async Task Create_makes_a_qcow2_image_that_reads_back_what_was_written()
    {
        var node = await Http.PostJsonAsync("/api/v1/nodes",
            new { name = "q", driver = "qcow2", path = "vm/q.qcow2", create = new { size = "8M", clusterSize = "4K" } }, HttpStatusCode.Created);
        Assert.Equal("qcow2", (string?)node["driver"]);
        Assert.Equal("qcow2", (string?)node["format"]);
        Assert.Empty(node["backing"]!.AsArray());
        Assert.Equal(Size, (long)node["size"]!);
        var header = File.ReadAllBytes(Full("vm/q.qcow2"))[..24];
        Assert.Equal(0x514649fbu, BinaryPrimitives.ReadUInt32BigEndian(header));
        Assert.Equal(12u, BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(20)));

        var model = new ImageModel(Size);
        await model.RandomWritesAsync(Http, "q", new Random(3), 20);
        Assert.Equal(model.Bytes, await Http.ReadAsync("q", 0, Size));
        // A raw node shows its format too, and no chain.
        var raw = await Http.CreateNodeAsync("r", M);
        Assert.Equal("raw", (string?)raw["format"]);
        Assert.Empty(raw["backing"]!.AsArray());
    }

    [Fact]
    public async Task A_backing_chain_reads_through_is_shown_nearest_first_and_stays_unchanged()
    {
        var baseData = ApiClient.Pattern((int)Size, 5);
        await Http.CreateNodeAsync("base", Size, "tmpl/base.img");
        await Http.WriteAsync("base", 0, baseData);
        await Http.DeleteAsync("/api/v1/nodes/base");

        var mid = await CreateQcow2Async("mid", "tmpl/mid.qcow2", extra: new { size = Size, backing = "tmpl/base.img" });
        Assert.Equal(["tmpl/base.img:raw"], Chain(mid));
        var midData = ApiClient.Pattern((int)M, 77);
        await Http.WriteAsync("mid", 2 * M, midData);
        await Http.DeleteAsync("/api/v1/nodes/mid");

        var top = await CreateQcow2Async("top", "vm/top.qcow2", extra: new { size = Size, backing = "tmpl/mid.qcow2", backingFormat = "qcow2" });
        Assert.Equal(["tmpl/mid.qcow2:qcow2", "tmpl/base.img:raw"], Chain(top));
        var expected = (byte[])baseData.Clone();
        midData.CopyTo(expected, 2 * M);
        Assert.Equal(expected, await Http.ReadAsync("top", 0, Size));

        var topData = ApiClient.Pattern(4096, 200);
        await Http.WriteAsync("top", 2 * M + 512, topData);
        topData.CopyTo(expected, 2 * M + 512);
        Assert.Equal(expected, await Http.ReadAsync("top", 0, Size));
        // Stored as QEMU stores it: relative to the image's own directory.
        Assert.Equal("../tmpl/mid.qcow2", BackingNameIn(Full("vm/top.qcow2")));
        Assert.Equal(baseData, File.ReadAllBytes(Full("tmpl/base.img")));

        // Opened again (not created), the chain comes from the image.
        await Http.DeleteAsync("/api/v1/nodes/top");
        var reopened = await Http.PostJsonAsync("/api/v1/nodes", new { name = "top", driver = "qcow2", path = "vm/top.qcow2" }, HttpStatusCode.Created);
        Assert.Equal(["tmpl/mid.qcow2:qcow2", "tmpl/base.img:raw"], Chain(reopened));
        Assert.Equal(expected, await Http.ReadAsync("top", 0, Size));
    }

    [Fact]
    public async Task A_backing_is_shared_read_only_and_closed_with_its_last_overlay()
    {
        await Http.CreateNodeAsync("base", Size, "base.img");
        await Http.WriteAsync("base", 0, ApiClient.Pattern(4096, 1));
        // The base is open read-write as a node: an overlay cannot open it read-only beside a writer.
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "a", driver = "qcow2", path = "a.qcow2", create = new { size = Size, backing = "base.img" } }, 409, "image-locked");
        Assert.False(File.Exists(Full("a.qcow2")), "a refused create leaves no file");
        await Http.DeleteAsync("/api/v1/nodes/base");

        await CreateQcow2Async("a", "a.qcow2", extra: new { size = Size, backing = "base.img" });
        await CreateQcow2Async("b", "b.qcow2", extra: new { size = Size, backing = "base.img" });
        Assert.Equal(ApiClient.Pattern(4096, 1), await Http.ReadAsync("b", 0, 4096));
        // Two readers share the base; a writer is refused while either overlay is open.
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "base", driver = "raw", path = "base.img" }, 409, "image-locked");
        await Http.DeleteAsync("/api/v1/nodes/a");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "base", driver = "raw", path = "base.img" }, 409, "image-locked");
        await Http.DeleteAsync("/api/v1/nodes/b");
        await Http.PostJsonAsync("/api/v1/nodes", new { name = "base", driver = "raw", path = "base.img" }, HttpStatusCode.Created);
        // And a qcow2 image is locked against a second writer like a raw one.
        await CreateQcow2Async("q", "q.qcow2");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "q2", driver = "qcow2", path = "q.qcow2" }, 409, "image-locked");
    }

    [Fact]
    public async Task Refusals_have_their_codes_and_change_nothing()
    {
        await Http.CreateNodeAsync("plain", M, "plain.img");
        await Http.DeleteAsync("/api/v1/nodes/plain");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "plain.img" }, 400, Qcow2Errors.NotQcow2Code);
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "missing.qcow2" }, 404, "image-not-found");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "../x.qcow2", create = new { size = M } }, 400, "path-outside-root");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = M, backing = "../outside.img" } }, 400, "backing-outside-root");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = M, backing = "nothing.img" } }, 404, "backing-not-found");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = M, backing = "x.qcow2" } }, 400, "backing-chain-loop");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = 1000 } }, 400, "invalid-size");
        var cluster = await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = M, clusterSize = 3000 } }, 400, "invalid-request");
        Assert.NotNull(cluster["errors"]!["create.clusterSize"]);
        var format = await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "x.qcow2", create = new { size = M, backing = "plain.img", backingFormat = "vmdk" } }, 400, "invalid-request");
        Assert.NotNull(format["errors"]!["create.backingFormat"]);
        var rawMembers = await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "raw", path = "x.img", create = new { size = M, backing = "plain.img" } }, 400, "invalid-request");
        Assert.NotNull(rawMembers["errors"]!["create.backing"]);
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", uri = "nbd://localhost/x" }, 400, "invalid-request");
        Assert.False(File.Exists(Full("x.qcow2")));
        Assert.False(File.Exists(Full("x.img")));
        Assert.Empty((await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray());

        // An image naming a backing file outside the root (as qemu-img -b /abs/path can make).
        var outside = Path.Combine(Factory.DataDir, "outside.img");
        await File.WriteAllBytesAsync(outside, new byte[M]);
        await using (var made = Qcow2Image.Create(Full("escape.qcow2"), M, backingPath: outside, backingFormat: "raw"))
        {
        }
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "escape.qcow2" }, 400, "backing-outside-root");
        // One whose backing file is gone.
        await using (var made = Qcow2Image.Create(Full("orphan.qcow2"), M, backingPath: "gone.img", backingFormat: "raw"))
        {
        }
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "orphan.qcow2" }, 404, "backing-not-found");
        // An incompatible feature bit this driver does not know: named, the image left alone.
        await CreateQcow2Async("f", "future.qcow2", M);
        await Http.DeleteAsync("/api/v1/nodes/f");
        using (var file = File.Open(Full("future.qcow2"), FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = 72;
            file.Write([0x80, 0, 0, 0, 0, 0, 0, 0]);
        }
        var before = File.ReadAllBytes(Full("future.qcow2"));
        var unknown = await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "qcow2", path = "future.qcow2" }, 400, Qcow2Errors.FeatureUnsupportedCode);
        Assert.Contains("Unknown incompatible feature: 8000000000000000", (string?)unknown["detail"]);
        Assert.Equal(before, File.ReadAllBytes(Full("future.qcow2")));
        Assert.Empty((await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray());
    }

    [Fact]
    public async Task A_qcow2_node_with_its_chain_and_bitmap_comes_back_after_a_restart()
    {
        var dir = Directory.CreateTempSubdirectory("blockmirror-qcow2-restart-").FullName;
        try
        {
            byte[] expected;
            string sha;
            await using (var first = new BlockMirrorFactory(dir))
            {
                var http = first.CreateClient();
                await http.CreateNodeAsync("base", Size, "base.img");
                await http.WriteAsync("base", M, ApiClient.Pattern((int)M, 9));
                await http.DeleteAsync("/api/v1/nodes/base");
                await http.PostJsonAsync("/api/v1/nodes", new { name = "top", driver = "qcow2", path = "top.qcow2", create = new { size = Size, backing = "base.img" } }, HttpStatusCode.Created);
                await http.AddBitmapAsync("top", "b", 65536, persistent: true);
                await http.WriteAsync("top", 3 * M, ApiClient.Pattern(70000, 4));
                expected = await http.ReadAsync("top", 0, Size);
                sha = (string)(await http.GetJsonAsync("/api/v1/nodes/top/bitmaps/b/sha256"))["sha256"]!;
            }
            await using (var second = new BlockMirrorFactory(dir))
            {
                var http = second.CreateClient();
                var top = await http.GetJsonAsync("/api/v1/nodes/top");
                Assert.Equal("qcow2", (string?)top["format"]);
                Assert.Equal(["base.img:raw"], Chain(top));
                Assert.Equal(expected, await http.ReadAsync("top", 0, Size));
                var bitmap = await http.GetJsonAsync("/api/v1/nodes/top/bitmaps/b");
                Assert.False((bool)bitmap["inconsistent"]!, (string?)bitmap["inconsistentReason"]);
                Assert.Equal(sha, (string)(await http.GetJsonAsync("/api/v1/nodes/top/bitmaps/b/sha256"))["sha256"]!);
            }
        }
        finally
        {
            BlockMirrorFactory.DeleteDir(dir);
        }
    }

    [Fact]
    public async Task Sync_top_copies_only_what_the_top_layer_holds()
    {
        var baseData = ApiClient.Pattern((int)Size, 3);
        await Http.CreateNodeAsync("base", Size, "base.img");
        await Http.WriteAsync("base", 0, baseData);
        await Http.DeleteAsync("/api/v1/nodes/base");
        await CreateQcow2Async("top", "top.qcow2", extra: new { size = Size, backing = "base.img" });
        var topData = ApiClient.Pattern(100_000, 42);
        await Http.WriteAsync("top", 5 * M + 1000, topData);
        await Http.PostJsonAsync("/api/v1/nodes/top/zero", new { offset = M, length = 65536, mayUnmap = false }, HttpStatusCode.NoContent);

        // Into a raw target: only the top layer's clusters arrive (the written one holds the backing's
        // bytes around the write, copied on write); everything else stays zero there.
        var source0 = await Http.ReadAsync("top", 0, Size);
        await Http.CreateNodeAsync("flat", Size, "flat.img");
        var job = await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "t", device = "top", target = "flat", sync = "top" }, HttpStatusCode.Created);
        Assert.Equal("top", (string?)job["sync"]);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "t");
        var expectedTopOnly = new byte[Size];
        const long cluster = 65536;
        var first = (5 * M + 1000) / cluster * cluster;
        var end = (5 * M + 1000 + topData.Length + cluster - 1) / cluster * cluster;
        Array.Copy(source0, first, expectedTopOnly, first, end - first);
        Assert.Equal(expectedTopOnly, await Http.ReadAsync("flat", 0, Size));
        await Http.PostJsonAsync("/api/v1/jobs/t/cancel", new { });
        await Events.WaitStatusAsync("t", "null");

        // Into a qcow2 target on the same backing: the pivoted device reads as the source did.
        var source = await Http.ReadAsync("top", 0, Size);
        await CreateQcow2Async("copy", "copy.qcow2", extra: new { size = Size, backing = "base.img" });
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "c", device = "top", target = "copy", sync = "top" }, HttpStatusCode.Created);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "c");
        var more = ApiClient.Pattern(5000, 17);
        await Http.WriteAsync("top", 7 * M, more);
        more.CopyTo(source, 7 * M);
        await Http.PostJsonAsync("/api/v1/jobs/c/complete", new { });
        await Events.WaitStatusAsync("c", "null");
        var pivoted = await Http.GetJsonAsync("/api/v1/nodes/top");
        Assert.Equal("copy.qcow2", (string?)pivoted["path"]);
        Assert.Equal(["base.img:raw"], Chain(pivoted));
        Assert.Equal(source, await Http.ReadAsync("top", 0, Size));
        // The copy holds the top layer only: a fraction of the base's 8 MiB.
        Assert.True(new FileInfo(Full("copy.qcow2")).Length < 2 * M, $"copy.qcow2 is {new FileInfo(Full("copy.qcow2")).Length} bytes");
    }

    [Fact]
    public async Task Sync_top_without_backing_is_full_and_full_flattens_a_chain()
    {
        await CreateQcow2Async("alone", "alone.qcow2");
        await Http.WriteAsync("alone", 0, ApiClient.Pattern(4096, 8));
        await Http.CreateNodeAsync("t1", Size, "t1.img");
        var job = await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "a", device = "alone", target = "t1", sync = "top" }, HttpStatusCode.Created);
        Assert.Equal("full", (string?)job["sync"]);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "a");
        await Http.PostJsonAsync("/api/v1/jobs/a/cancel", new { });
        await Events.WaitStatusAsync("a", "null");

        await Http.CreateNodeAsync("base", Size, "base.img");
        await Http.WriteAsync("base", 0, ApiClient.Pattern((int)Size, 6));
        await Http.DeleteAsync("/api/v1/nodes/base");
        await CreateQcow2Async("top", "top.qcow2", extra: new { size = Size, backing = "base.img" });
        await Http.WriteAsync("top", 4 * M, ApiClient.Pattern(8192, 99));
        var expected = await Http.ReadAsync("top", 0, Size);
        await CreateQcow2Async("flat", "flat.qcow2");
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "f", device = "top", target = "flat", sync = "full" }, HttpStatusCode.Created);
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "f");
        Assert.Equal(expected, await Http.ReadAsync("flat", 0, Size));
        Assert.Empty((await Http.GetJsonAsync("/api/v1/nodes/flat"))["backing"]!.AsArray());
        await Http.PostJsonAsync("/api/v1/jobs/f/cancel", new { });
        await Events.WaitStatusAsync("f", "null");
    }

    /// <summary>The backing file name stored in a qcow2 header (offset 8: its offset, 16: its length).</summary>
    private static string BackingNameIn(string file)
    {
        var bytes = File.ReadAllBytes(file);
        var offset = (int)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(8));
        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(16));
        return System.Text.Encoding.UTF8.GetString(bytes, offset, length);
    }
}
