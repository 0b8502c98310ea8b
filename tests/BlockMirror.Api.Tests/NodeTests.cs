using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

public sealed class NodeTests : ServiceTest
{
    [Fact]
    public async Task Create_returns_201_with_location_and_a_sparse_image()
    {
        using var response = await Http.PostAsJsonAsync("/api/v1/nodes", new { name = "disk0", driver = "raw", path = "vm/disk0.img", create = new { size = 1L << 30 } });
        var node = await ApiClient.ExpectAsync(response, HttpStatusCode.Created);
        Assert.Equal("/api/v1/nodes/disk0", response.Headers.Location?.OriginalString);
        Assert.Equal("disk0", (string?)node["name"]);
        Assert.Equal("raw", (string?)node["driver"]);
        Assert.Equal("vm/disk0.img", (string?)node["path"]);
        Assert.Equal(1L << 30, (long)node["size"]!);
        Assert.True((long)node["allocatedBytes"]! < 1 << 20);
        Assert.False((bool)node["busy"]!);
        Assert.True(File.Exists(Path.Combine(Factory.ImageRoot, "vm", "disk0.img")));
    }

    [Fact]
    public async Task List_get_and_delete_round_trip()
    {
        await Http.CreateNodeAsync("a", 1 << 20);
        await Http.CreateNodeAsync("b", 1 << 20);
        var list = await Http.GetJsonAsync("/api/v1/nodes");
        Assert.Equal(["a", "b"], list["items"]!.AsArray().Select(n => (string)n!["name"]!).ToArray());
        var a = await Http.GetJsonAsync("/api/v1/nodes/a");
        Assert.Equal("a.img", (string?)a["path"]);

        using var deleted = await Http.DeleteAsync("/api/v1/nodes/a");
        Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
        Assert.True(File.Exists(Path.Combine(Factory.ImageRoot, "a.img")), "the image is kept by default");
        using var gone = await Http.GetAsync("/api/v1/nodes/a");
        await ApiClient.ExpectProblemAsync(gone, 404, "node-not-found");

        using var deletedWithImage = await Http.DeleteAsync("/api/v1/nodes/b?deleteImage=true");
        Assert.Equal(HttpStatusCode.NoContent, deletedWithImage.StatusCode);
        Assert.False(File.Exists(Path.Combine(Factory.ImageRoot, "b.img")));
    }

    [Fact]
    public async Task Open_existing_image_and_refuse_a_second_writer()
    {
        await Http.CreateNodeAsync("a", 1 << 20, "shared.img");
        // The first node holds the image's write lock: a second node on the same file is refused.
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "b", driver = "raw", path = "shared.img" }, 409, "image-locked");
        using var _ = await Http.DeleteAsync("/api/v1/nodes/a");
        var b = await Http.PostJsonAsync("/api/v1/nodes", new { name = "b", driver = "raw", path = "shared.img" }, HttpStatusCode.Created);
        Assert.Equal(1L << 20, (long)b["size"]!);
    }

    [Fact]
    public async Task Node_creation_refusals_have_their_codes()
    {
        await Http.CreateNodeAsync("a", 1 << 20);
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "a", driver = "raw", path = "other.img", create = new { size = 512 } }, 409, "node-exists");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "c", driver = "raw", path = "a.img", create = new { size = 512 } }, 409, "image-exists");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "c", driver = "raw", path = "missing.img" }, 404, "image-not-found");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "c", driver = "raw", path = "c.img", create = new { size = 1000 } }, 400, "invalid-size");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "c", driver = "raw", path = "c.img", create = new { size = -512 } }, 400, "invalid-size");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "-bad", driver = "raw", path = "c.img", create = new { size = 512 } }, 400, "invalid-name");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = new string('x', 129), driver = "raw", path = "c.img", create = new { size = 512 } }, 400, "invalid-name");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "c", driver = "qcow9", path = "c.img" }, 400, "invalid-request");
        await Http.PostProblemAsync("/api/v1/nodes", new { driver = "raw", path = "c.img" }, 400, "invalid-request");
    }

    [Theory]
    [InlineData("../escape.img")]
    [InlineData("a/../../escape.img")]
    [InlineData("/etc/passwd")]
    [InlineData("/tmp/x.img")]
    [InlineData("")]
    [InlineData("dir/")]
    public async Task Paths_outside_the_root_are_refused(string path)
    {
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "raw", path, create = new { size = 512 } }, 400, "path-outside-root");
        Assert.False(File.Exists(Path.Combine(Factory.DataDir, "escape.img")));
    }

    [Fact]
    public async Task Symlinks_that_leave_the_root_are_refused()
    {
        var outside = Path.Combine(Factory.DataDir, "outside");
        Directory.CreateDirectory(outside);
        File.WriteAllBytes(Path.Combine(outside, "secret.img"), new byte[4096]);
        Directory.CreateDirectory(Factory.ImageRoot);
        Directory.CreateSymbolicLink(Path.Combine(Factory.ImageRoot, "link"), outside);
        File.CreateSymbolicLink(Path.Combine(Factory.ImageRoot, "file-link.img"), Path.Combine(outside, "secret.img"));

        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "raw", path = "link/secret.img" }, 400, "path-outside-root");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "raw", path = "link/new.img", create = new { size = 512 } }, 400, "path-outside-root");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "x", driver = "raw", path = "file-link.img" }, 400, "path-outside-root");
        Assert.False(File.Exists(Path.Combine(outside, "new.img")));
    }

    [Fact]
    public async Task Data_round_trip_zero_discard_and_extents()
    {
        await Http.CreateNodeAsync("d", 4 << 20);
        var data = ApiClient.Pattern(100_000, 3);
        await Http.WriteAsync("d", 1_000_003, data);
        Assert.Equal(data, await Http.ReadAsync("d", 1_000_003, data.Length));
        Assert.Equal(new byte[1000], await Http.ReadAsync("d", 0, 1000));

        var extents = await Http.GetJsonAsync("/api/v1/nodes/d/extents");
        var items = extents["items"]!.AsArray();
        Assert.Contains(items, e => (string?)e!["type"] == "data" && (long)e["offset"]! <= 1_000_003 && (long)e["offset"]! + (long)e["length"]! >= 1_100_003);
        Assert.Equal(4L << 20, items.Sum(e => (long)e!["length"]!));

        using (var z = await Http.PostAsJsonAsync("/api/v1/nodes/d/zero", new { offset = 1_000_003, length = 10_000, mayUnmap = false }))
            Assert.Equal(HttpStatusCode.NoContent, z.StatusCode);
        Assert.Equal(new byte[10_000], await Http.ReadAsync("d", 1_000_003, 10_000));
        Assert.Equal(data[10_000..], await Http.ReadAsync("d", 1_010_003, data.Length - 10_000));

        using (var d = await Http.PostAsJsonAsync("/api/v1/nodes/d/discard", new { offset = 0, length = 4 << 20 }))
            Assert.Equal(HttpStatusCode.NoContent, d.StatusCode);
        Assert.Equal(new byte[data.Length], await Http.ReadAsync("d", 1_000_003, data.Length));
        var after = await Http.GetJsonAsync("/api/v1/nodes/d/extents");
        Assert.All(after["items"]!.AsArray(), e => Assert.Equal("zero", (string?)e!["type"]));
    }

    [Fact]
    public async Task Data_path_refusals_have_their_codes()
    {
        await Http.CreateNodeAsync("d", 1 << 20);
        using (var content = new ByteArrayContent(new byte[10]))
        {
            using var r = await Http.PutAsync($"/api/v1/nodes/d/data?offset={(1 << 20) - 5}", content);
            await ApiClient.ExpectProblemAsync(r, 400, "out-of-range");
        }
        using (var content = new ByteArrayContent(new byte[10]))
        {
            using var r = await Http.PutAsync("/api/v1/nodes/d/data?offset=-1", content);
            await ApiClient.ExpectProblemAsync(r, 400, "out-of-range");
        }
        using (var content = new ByteArrayContent(new byte[10]))
        {
            using var r = await Http.PutAsync("/api/v1/nodes/d/data?offset=99999999999999999999999", content);
            await ApiClient.ExpectProblemAsync(r, 400, "invalid-request");
        }
        using (var content = new ByteArrayContent(new byte[10]))
        {
            using var r = await Http.PutAsync("/api/v1/nodes/nope/data?offset=0", content);
            await ApiClient.ExpectProblemAsync(r, 404, "node-not-found");
        }
        using (var r = await Http.GetAsync($"/api/v1/nodes/d/data?offset=0&length={(1 << 20) + 1}"))
            await ApiClient.ExpectProblemAsync(r, 400, "out-of-range");
        using (var r = await Http.GetAsync($"/api/v1/nodes/d/data?offset={long.MaxValue}&length={long.MaxValue}"))
            await ApiClient.ExpectProblemAsync(r, 400, "out-of-range");
        await Http.PostProblemAsync("/api/v1/nodes/d/zero", new { offset = 1 << 20, length = 1 }, 400, "out-of-range");
        await Http.PostProblemAsync("/api/v1/nodes/d/discard", new { offset = long.MaxValue, length = long.MaxValue }, 400, "out-of-range");
        await Http.PostProblemAsync("/api/v1/nodes/d/zero", new { length = 1 }, 400, "invalid-request");

        await Http.PostJsonAsync("/api/v1/nodes", new { name = "ro", driver = "raw", path = "d.img", readOnly = true }, HttpStatusCode.Conflict);
        await Http.CreateNodeAsync("base", 1 << 20);
        using (var _ = await Http.DeleteAsync("/api/v1/nodes/base")) { }
        await Http.PostJsonAsync("/api/v1/nodes", new { name = "ro", driver = "raw", path = "base.img", readOnly = true }, HttpStatusCode.Created);
        using (var content = new ByteArrayContent(new byte[10]))
        {
            using var r = await Http.PutAsync("/api/v1/nodes/ro/data?offset=0", content);
            await ApiClient.ExpectProblemAsync(r, 409, "node-read-only");
        }
        await Http.PostProblemAsync("/api/v1/nodes/ro/zero", new { offset = 0, length = 512 }, 409, "node-read-only");
    }

    [Fact]
    public async Task Oversized_data_body_is_413()
    {
        await using var small = new BlockMirrorFactory(settings: new Dictionary<string, string?> { ["Storage:MaxDataBodyBytes"] = "65536" });
        var http = small.CreateClient();
        await http.CreateNodeAsync("d", 1 << 20);
        using var content = new ByteArrayContent(new byte[65537]);
        using var r = await http.PutAsync("/api/v1/nodes/d/data?offset=0", content);
        await ApiClient.ExpectProblemAsync(r, 413, "body-too-large");
    }

    /// <summary>
    /// Issue 10.11: a chunked body has no Content-Length to refuse up front; before, the endpoint
    /// wrote it megabyte by megabyte until Kestrel's body limit fired on a later read, so 2 MiB of a
    /// refused request were in the image and its bitmaps. On a real Kestrel socket: TestServer
    /// buffers a request body and gives it a Content-Length, so it never shows a chunked body.
    /// </summary>
    [Fact]
    public async Task A_chunked_body_over_the_limit_writes_nothing()
    {
        await using var factory = new Browser.KestrelBlockMirrorFactory();
        factory.Settings["Storage:MaxDataBodyBytes"] = $"{(5 << 20) / 2}";
        using var http = factory.CreateSocketClient();
        await http.CreateNodeAsync("d", 8 << 20);
        await http.AddBitmapAsync("d", "b");
        await http.AddBitmapAsync("d", "p", persistent: true);

        var body = ApiClient.Pattern(4 << 20, 3);
        HttpStatusCode status;
        string text;
        try
        {
            using var r = await http.PutAsync("/api/v1/nodes/d/data?offset=0", new ChunkedContent(body));
            status = r.StatusCode;
            text = await r.Content.ReadAsStringAsync();
        }
        catch (HttpRequestException)
        {
            // Kestrel may answer 413 and close before the client has sent the rest: the refusal is what counts.
            status = HttpStatusCode.RequestEntityTooLarge;
            text = "(connection closed after the answer)";
        }
        Assert.True(status == HttpStatusCode.RequestEntityTooLarge, $"{(int)status}: {text}");

        Assert.Equal(new byte[4 << 20], await http.ReadAsync("d", 0, 4 << 20));
        foreach (var b in new[] { "b", "p" })
            Assert.Equal(0, (long)(await http.GetJsonAsync($"/api/v1/nodes/d/bitmaps/{b}"))["count"]!);
    }

    /// <summary>
    /// A chunked body within the limit is written whole; one that would run past the node's end is
    /// refused whole (before, the megabytes inside the node were written before the refusal).
    /// </summary>
    [Fact]
    public async Task A_chunked_body_is_checked_whole_before_it_is_written()
    {
        await using var factory = new Browser.KestrelBlockMirrorFactory();
        using var http = factory.CreateSocketClient();
        await http.CreateNodeAsync("d", 4 << 20);
        await http.AddBitmapAsync("d", "b");
        var body = ApiClient.Pattern((3 << 20) + 12345, 5);
        using (var r = await http.PutAsync("/api/v1/nodes/d/data?offset=4096", new ChunkedContent(body)))
            await ApiClient.ExpectAsync(r, HttpStatusCode.NoContent);
        Assert.Equal(body, await http.ReadAsync("d", 4096, body.Length));

        // 3 MiB from 2 MiB runs 1 MiB past the end: nothing of it is written, no bitmap changes.
        await http.PostJsonAsync("/api/v1/nodes/d/discard", new { offset = 0, length = 4 << 20 }, HttpStatusCode.NoContent);
        await http.PostJsonAsync("/api/v1/transactions", new { actions = new[] { new { type = "bitmap-clear", node = "d", name = "b" } } });
        using (var r = await http.PutAsync($"/api/v1/nodes/d/data?offset={2 << 20}", new ChunkedContent(ApiClient.Pattern(3 << 20, 7))))
            await ApiClient.ExpectProblemAsync(r, 400, "out-of-range");
        Assert.Equal(new byte[4 << 20], await http.ReadAsync("d", 0, 4 << 20));
        Assert.Equal(0, (long)(await http.GetJsonAsync("/api/v1/nodes/d/bitmaps/b"))["count"]!);
    }

    [Fact]
    public async Task Oversized_json_body_is_413()
    {
        var huge = new string('a', 2 << 20);
        using var content = new StringContent($$"""{"name":"{{huge}}","driver":"raw"}""", System.Text.Encoding.UTF8, "application/json");
        using var r = await Http.PostAsync("/api/v1/nodes", content);
        await ApiClient.ExpectProblemAsync(r, 413, "body-too-large");
    }
}
