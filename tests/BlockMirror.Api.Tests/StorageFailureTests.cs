using System.Net;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Refused requests change nothing (issue 10, items 4 and 8): a bitmap the limits refuse up front,
/// and requests the database refuses (its files made immutable, as a failing disk would) answer a
/// problem document, 503 <c>storage-unavailable</c> for the database, and leave no trace, in memory,
/// on disk or after a restart; <c>/healthz</c> is 503 meanwhile.
/// </summary>
// In the metrics collection (run alone, after the parallel tests): one test reads the bitmap memory
// gauge, and every live host in the process publishes into the same series (see MetricsTests).
[Collection(MetricsTests.CollectionName)]
public sealed class StorageFailureTests : IDisposable
{
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-storage-").FullName;
    private ImmutableDatabase? _database;

    private ImmutableDatabase Database => _database ??= new(_dir);

    public void Dispose()
    {
        Database.Heal();
        BlockMirrorFactory.DeleteDir(_dir);
    }

    private static async Task<HttpStatusCode> HealthAsync(HttpClient http)
    {
        using var response = await http.GetAsync("/healthz");
        return response.StatusCode;
    }

    /// <summary>A bounded poll of /healthz (it probes the database at most once a second) until it says <paramref name="expected"/>.</summary>
    private static async Task WaitHealthAsync(HttpClient http, HttpStatusCode expected)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (await HealthAsync(http) != expected)
        {
            Assert.True(DateTime.UtcNow < deadline, $"/healthz never answered {(int)expected}");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task An_oversize_persistent_bitmap_is_refused_up_front_and_never_listed()
    {
        await using var factory = new BlockMirrorFactory(_dir);
        var http = factory.CreateClient();
        await http.CreateNodeAsync("big", 8L << 40);

        var problem = await http.PostProblemAsync("/api/v1/nodes/big/bitmaps", new { name = "p", granularity = 512, persistent = true }, 400, "bitmap-too-large");

        Assert.Contains("at least 2048", (string?)problem["detail"]);
        Assert.Empty((await http.GetJsonAsync("/api/v1/nodes/big/bitmaps"))["items"]!.AsArray());
    }

    [Fact]
    public async Task Removing_a_bitmap_and_adding_an_oversize_one_keeps_the_first()
    {
        await using var factory = new BlockMirrorFactory(_dir);
        var http = factory.CreateClient();
        await http.CreateNodeAsync("big", 8L << 40);
        await http.AddBitmapAsync("big", "keep", persistent: true);

        var problem = await http.PostProblemAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-remove", node = "big", name = "keep" },
                new { type = "bitmap-add", node = "big", name = "huge", granularity = 512, persistent = true },
            },
        }, 400, "bitmap-too-large");

        Assert.Equal(1, (int?)problem["actionIndex"]);
        Assert.Equal(["keep"], (await http.GetJsonAsync("/api/v1/nodes/big"))["bitmaps"]!.AsArray().Select(b => (string)b!));
        // Not left busy: it can be removed.
        using var removed = await http.DeleteAsync("/api/v1/nodes/big/bitmaps/keep");
        Assert.Equal(HttpStatusCode.NoContent, removed.StatusCode);
    }

    [Fact]
    public async Task The_bitmap_memory_budget_and_the_action_cap_refuse_with_codes()
    {
        var fine = 131072 / 8 + 2048 / 8 + 8; // a 64 MiB node at 512 bytes: 131072 bits in three levels
        await using var factory = new BlockMirrorFactory(_dir, new Dictionary<string, string?>
        {
            ["Limits:BitmapMemoryBytes"] = (fine + fine / 2).ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Limits:MaxTransactionActions"] = "2",
        });
        var http = factory.CreateClient();
        await http.CreateNodeAsync("disk", 64L << 20);
        await http.AddBitmapAsync("disk", "b1", 512);

        await http.PostProblemAsync("/api/v1/nodes/disk/bitmaps", new { name = "b2", granularity = 512 }, 409, "bitmap-memory-exceeded");
        await http.PostProblemAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-add", node = "disk", name = "x" },
                new { type = "bitmap-add", node = "disk", name = "y" },
                new { type = "bitmap-add", node = "disk", name = "z" },
            },
        }, 400, "too-many-actions");

        Assert.Equal(["b1"], (await http.GetJsonAsync("/api/v1/nodes/disk"))["bitmaps"]!.AsArray().Select(b => (string)b!));
        var metrics = await http.GetStringAsync("/metrics");
        Assert.Contains($"blockmirror_bitmap_memory_bytes{{otel_scope_name=\"BlockMirror\"}} {fine}", metrics);
    }

    [ChattrFact]
    public async Task Bitmap_add_and_clear_on_an_unwritable_database_answer_503_and_take_no_effect()
    {
        await using (var factory = new BlockMirrorFactory(_dir))
        {
            var http = factory.CreateClient();
            await http.CreateNodeAsync("disk", 16L << 20);
            await http.AddBitmapAsync("disk", "keep", G, persistent: true);
            await http.WriteAsync("disk", 0, new byte[G]);
            Assert.Equal(HttpStatusCode.OK, await HealthAsync(http));
            Database.Fail();

            var add = await http.PostProblemAsync("/api/v1/nodes/disk/bitmaps", new { name = "new", persistent = true }, 503, "storage-unavailable");
            await http.PostProblemAsync("/api/v1/nodes/disk/bitmaps", new { name = "plain" }, 503, "storage-unavailable");
            await http.PostProblemAsync("/api/v1/nodes/disk/bitmaps/keep/clear", null, 503, "storage-unavailable");

            Assert.Contains("nothing of the request took effect", (string?)add["detail"]);
            Assert.Equal(["keep"], (await http.GetJsonAsync("/api/v1/nodes/disk"))["bitmaps"]!.AsArray().Select(b => (string)b!));
            Assert.Equal(G, (long)(await http.GetJsonAsync("/api/v1/nodes/disk/bitmaps/keep"))["count"]!);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, await HealthAsync(http));

            Database.Heal();
            await WaitHealthAsync(http, HttpStatusCode.OK);
        }

        // The clean stop stored nothing the refusals left behind.
        await using (var again = new BlockMirrorFactory(_dir))
        {
            var http = again.CreateClient();
            Assert.Equal(["keep"], (await http.GetJsonAsync("/api/v1/nodes/disk"))["bitmaps"]!.AsArray().Select(b => (string)b!));
            Assert.Equal(G, (long)(await http.GetJsonAsync("/api/v1/nodes/disk/bitmaps/keep"))["count"]!);
            await http.AddBitmapAsync("disk", "new", persistent: true);
        }
    }

    [ChattrFact]
    public async Task A_node_create_on_an_unwritable_database_leaves_no_image_behind()
    {
        await using var factory = new BlockMirrorFactory(_dir);
        var http = factory.CreateClient();
        await http.CreateNodeAsync("first", 1L << 20);
        Database.Fail();

        await http.PostProblemAsync("/api/v1/nodes", new { name = "disk", driver = "raw", path = "disk.img", create = new { size = 1L << 20 } }, 503, "storage-unavailable");

        Assert.False(File.Exists(Path.Combine(factory.ImageRoot, "disk.img")));
        await http.GetJsonAsync("/api/v1/nodes/disk", HttpStatusCode.NotFound);
        Database.Heal();
        await http.CreateNodeAsync("disk", 1L << 20);
    }

    [ChattrFact]
    public async Task A_pivot_that_cannot_be_stored_fails_the_job_and_the_device_stays_on_its_image()
    {
        var after = ApiClient.Pattern(4096, 9);
        await using (var factory = new BlockMirrorFactory(_dir))
        {
            var http = factory.CreateClient();
            await http.CreateNodeAsync("src", 8L << 20);
            await http.CreateNodeAsync("tgt", 8L << 20);
            await http.WriteAsync("src", 0, ApiClient.Pattern((int)G, 1));
            await using var events = await EventWaiter.StartAsync(http);
            await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "m", device = "src", target = "tgt", sync = "full" }, HttpStatusCode.Created);
            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == "m");
            Database.Fail();

            await http.PostJsonAsync("/api/v1/jobs/m/complete", new { });
            var done = await events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == "m");

            Assert.Contains("could not be stored", (string?)done.Data["error"]);
            Assert.Equal("src.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/src"))["path"]);
            Assert.Equal("tgt.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/tgt"))["path"]);
            Database.Heal();
            await http.WriteAsync("src", 2 * G, after);
            Assert.Equal(after, await http.ReadAsync("src", 2 * G, after.Length));
        }

        // What the service showed is what a restart finds: the device on its own image, with the writes made after.
        await using (var again = new BlockMirrorFactory(_dir))
        {
            var http = again.CreateClient();
            Assert.Equal("src.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/src"))["path"]);
            Assert.Equal(after, await http.ReadAsync("src", 2 * G, after.Length));
            await http.GetJsonAsync("/api/v1/nodes/tgt");
        }
    }
}
