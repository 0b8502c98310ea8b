using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// An image replaced under an open node (<c>mv new.img disk.img</c>), or reached through a directory
/// swapped for a symlink out of the root: the node says so, its writes are refused, its persistent
/// bitmaps never claim to be exact, refusals change nothing, and a clean stop still stops cleanly.
/// </summary>
public sealed class ImageReplacementTests : IDisposable
{
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-replaced-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private string Images => Path.Combine(_dir, "images");

    /// <summary>A node with a persistent bitmap holding one write; the background check off unless asked for.</summary>
    private static async Task<HttpClient> SetUpAsync(BlockMirrorFactory factory, string path)
    {
        var http = factory.CreateClient();
        await http.CreateNodeAsync("disk0", 1L << 20, path);
        await http.AddBitmapAsync("disk0", "p", persistent: true);
        await http.AddBitmapAsync("disk0", "mem");
        await http.WriteAsync("disk0", 3 * G, new byte[100]);
        return http;
    }

    private BlockMirrorFactory Factory(TimeSpan? checkInterval = null) => new(_dir, new Dictionary<string, string?>
    {
        ["Storage:ImageCheckInterval"] = (checkInterval ?? TimeSpan.Zero).ToString(),
    });

    [Fact]
    public async Task A_file_renamed_over_the_image_is_seen_before_a_control_operation_and_nothing_claims_exactness()
    {
        await using (var factory = Factory())
        {
            var http = await SetUpAsync(factory, "disk.img");
            // Another 1 MiB file renamed over the node's path: the node still has the old one open.
            var replacement = Path.Combine(Images, "new.img");
            await File.WriteAllBytesAsync(replacement, new byte[1 << 20]);
            File.Move(replacement, Path.Combine(Images, "disk.img"), overwrite: true);

            // A control operation on the node looks first, and refuses without changing anything.
            var refused = await http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps", new { name = "new" }, 409, "image-replaced");
            Assert.Contains("replaced by another file", (string)refused["detail"]!, StringComparison.Ordinal);
            var node = await http.GetJsonAsync("/api/v1/nodes/disk0");
            Assert.True((bool)node["imageReplaced"]!);
            Assert.Contains("disk.img", (string)node["imageReplacedReason"]!, StringComparison.Ordinal);
            Assert.Equal(["p", "mem"], Names(node["bitmaps"]!));

            var p = await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
            Assert.True((bool)p["inconsistent"]!);
            Assert.Contains("replaced", (string)p["inconsistentReason"]!, StringComparison.Ordinal);
            await http.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/p/clear", new { }, 409, "bitmap-inconsistent");

            // Writes would go to a file nobody reaches under that path any more.
            using var content = new ByteArrayContent(new byte[512]);
            using var write = await http.PutAsync("/api/v1/nodes/disk0/data?offset=0", content);
            await ApiClient.ExpectProblemAsync(write, 409, "image-replaced");
            await http.PostProblemAsync("/api/v1/nodes/disk0/zero", new { offset = 0, length = 512 }, 409, "image-replaced");
            await http.PostProblemAsync("/api/v1/exports", new { name = "e", node = "disk0" }, 409, "image-replaced");
            await http.CreateNodeAsync("copy", 1L << 20);
            await http.PostProblemAsync("/api/v1/jobs/mirror", new { id = "m", device = "disk0", target = "copy", sync = "full" }, 409, "image-replaced");
            Assert.Equal(new byte[1 << 20], await File.ReadAllBytesAsync(Path.Combine(Images, "disk.img")));
        }

        // The clean stop stamped the file it had open: after a restart the bitmap is still not claimed exact.
        await using var second = Factory();
        var restarted = await second.CreateClient().GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
        Assert.True((bool)restarted["inconsistent"]!);
        Assert.Contains("replaced", (string)restarted["inconsistentReason"]!, StringComparison.Ordinal);
        Assert.False((bool)(await second.CreateClient().GetJsonAsync("/api/v1/nodes/disk0"))["imageReplaced"]!);
    }

    [Fact]
    public async Task The_background_check_sees_a_replacement_without_any_request()
    {
        await using var factory = Factory(TimeSpan.FromMilliseconds(100));
        var http = await SetUpAsync(factory, "disk.img");
        File.Delete(Path.Combine(Images, "disk.img"));

        // A bounded poll of the node's state (GET does not check; only the background round can find it).
        JsonNode node;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!(bool)(node = await http.GetJsonAsync("/api/v1/nodes/disk0"))["imageReplaced"]! && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        Assert.True((bool)node["imageReplaced"]!);
        Assert.Contains("removed", (string)node["imageReplacedReason"]!, StringComparison.Ordinal);
        Assert.True((bool)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["inconsistent"]!);
    }

    [Fact]
    public async Task A_directory_swapped_for_a_symlink_out_of_the_root_is_refused_without_effect_and_the_stop_is_clean()
    {
        var outside = Path.Combine(_dir, "elsewhere");
        await using (var factory = Factory())
        {
            var http = await SetUpAsync(factory, "vm/disk.img");
            var countBefore = (long)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/mem"))["count"]!;
            // The directory moves out of the root and a symlink takes its place: same file, but reached from outside.
            Directory.Move(Path.Combine(Images, "vm"), outside);
            File.CreateSymbolicLink(Path.Combine(Images, "vm"), outside);
            var before = await File.ReadAllBytesAsync(Path.Combine(outside, "disk.img"));

            // Refused requests change nothing, in memory or on disk.
            await http.PostProblemAsync("/api/v1/transactions", new
            {
                actions = new object[]
                {
                    new { type = "bitmap-clear", node = "disk0", name = "mem" },
                    new { type = "bitmap-add", node = "disk0", name = "new" },
                },
            }, 409, "image-replaced");
            Assert.Equal(countBefore, (long)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/mem"))["count"]!);
            Assert.Equal(["p", "mem"], Names((await http.GetJsonAsync("/api/v1/nodes/disk0"))["bitmaps"]!));
            Assert.Contains("outside the image root", (string)(await http.GetJsonAsync("/api/v1/nodes/disk0"))["imageReplacedReason"]!, StringComparison.Ordinal);

            // DELETE either does it all or nothing: deleting the image through the symlink is refused, the node stays.
            using (var refused = await http.DeleteAsync("/api/v1/nodes/disk0?deleteImage=true"))
                await ApiClient.ExpectProblemAsync(refused, 409, "image-replaced");
            await http.GetJsonAsync("/api/v1/nodes/disk0");
            Assert.Equal(before, await File.ReadAllBytesAsync(Path.Combine(outside, "disk.img")));

            // A second node keeps the clean stop busy with a checkpoint of its own.
            await http.CreateNodeAsync("other", 1L << 20);
            await http.AddBitmapAsync("other", "q", persistent: true);
            await http.WriteAsync("other", 0, new byte[1]);
        }
        // The clean stop finished (the factory's dispose did not throw) and stored what it could.
        await using var second = Factory();
        var h = second.CreateClient();
        var q = await h.GetJsonAsync("/api/v1/nodes/other/bitmaps/q");
        Assert.False((bool)q["inconsistent"]!);
        Assert.Equal(G, (long)q["count"]!);
        // The node on the escaped path is not reopened (the path leads outside the root).
        await h.GetJsonAsync("/api/v1/nodes/disk0", HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task Deleting_a_replaced_node_without_its_image_succeeds_and_leaves_the_new_file()
    {
        await using var factory = Factory();
        var http = await SetUpAsync(factory, "disk.img");
        var replacement = Path.Combine(Images, "new.img");
        await File.WriteAllBytesAsync(replacement, ApiClient.Pattern(1 << 20, 3));
        File.Move(replacement, Path.Combine(Images, "disk.img"), overwrite: true);

        using (var deleted = await http.DeleteAsync("/api/v1/nodes/disk0"))
            Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
        await http.GetJsonAsync("/api/v1/nodes/disk0", HttpStatusCode.NotFound);
        Assert.Equal(ApiClient.Pattern(1 << 20, 3), await File.ReadAllBytesAsync(Path.Combine(Images, "disk.img")));
        // And the new file can be added as a node of its own.
        await http.PostJsonAsync("/api/v1/nodes", new { name = "disk0", driver = "raw", path = "disk.img" }, HttpStatusCode.Created);
    }

    [Fact]
    public async Task A_mirror_whose_target_file_was_replaced_fails_instead_of_pivoting_onto_it()
    {
        await using var factory = Factory();
        var http = await SetUpAsync(factory, "disk.img");
        await http.CreateNodeAsync("copy", 1L << 20, "copy.img");
        await using (var events = await EventWaiter.StartAsync(http))
        {
            await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "m", device = "disk0", target = "copy", sync = "full" }, HttpStatusCode.Created);
            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "m");
            var replacement = Path.Combine(Images, "new.img");
            await File.WriteAllBytesAsync(replacement, new byte[1 << 20]);
            File.Move(replacement, Path.Combine(Images, "copy.img"), overwrite: true);

            await http.PostJsonAsync("/api/v1/jobs/m/complete", new { });
            var completed = await events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "m");
            Assert.Contains("Cannot pivot", (string)completed.Data["error"]!, StringComparison.Ordinal);
        }
        // The device stays on its own image, and keeps taking writes.
        Assert.Equal("disk.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/disk0"))["path"]);
        await http.WriteAsync("disk0", 0, new byte[1]);
        Assert.True((bool)(await http.GetJsonAsync("/api/v1/nodes/copy"))["imageReplaced"]!);
    }

    private static string[] Names(JsonNode array) => [.. array.AsArray().Select(n => (string)n!)];
}
