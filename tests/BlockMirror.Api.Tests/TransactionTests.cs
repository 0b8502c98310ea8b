using System.Net;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

public sealed class TransactionTests : ServiceTest
{
    private const long G = 65536;

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", 16L << 20);
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.WriteAsync("disk0", 2 * G, new byte[G]);
    }

    [Fact]
    public async Task Copy_and_reset_in_one_step()
    {
        // libvirt's checkpoint pattern: new bitmap, merge the old one into it, clear the old one.
        var result = await Http.PostJsonAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-add", node = "disk0", name = "copy", granularity = G },
                new { type = "bitmap-merge", node = "disk0", name = "copy", sources = new[] { new { name = "b0" } } },
                new { type = "bitmap-clear", node = "disk0", name = "b0" },
            },
        });
        var results = result["results"]!.AsArray();
        Assert.Equal(3, results.Count);
        Assert.Equal("copy", (string?)results[0]!["name"]);
        Assert.Equal(G, (long)results[1]!["count"]!);
        Assert.Equal(0, (long)results[2]!["count"]!);
        Assert.Equal(G, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/copy"))["count"]!);
        Assert.Equal(0, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["count"]!);
    }

    [Fact]
    public async Task First_failure_aborts_everything_and_reports_its_index()
    {
        await Http.AddBitmapAsync("disk0", "b1", disabled: true);
        var before = (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/sha256"))["sha256"];
        var problem = await Http.PostProblemAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-add", node = "disk0", name = "new" },
                new { type = "bitmap-clear", node = "disk0", name = "b0" },
                new { type = "bitmap-enable", node = "disk0", name = "b1" },
                new { type = "bitmap-remove", node = "disk0", name = "b1" },
                new { type = "bitmap-merge", node = "disk0", name = "b0", sources = new[] { new { name = "missing" } } },
            },
        }, 404, "bitmap-not-found");
        Assert.Equal(4, (int?)problem["actionIndex"]);

        using (var r = await Http.GetAsync("/api/v1/nodes/disk0/bitmaps/new"))
            await ApiClient.ExpectProblemAsync(r, 404, "bitmap-not-found");
        Assert.Equal(before, (string?)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/sha256"))["sha256"]);
        var b1 = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b1");
        Assert.False((bool)b1["recording"]!);
        Assert.False((bool)b1["busy"]!);
    }

    [Fact]
    public async Task A_removed_bitmap_cannot_be_used_later_in_the_same_transaction()
    {
        await Http.AddBitmapAsync("disk0", "t");
        var problem = await Http.PostProblemAsync("/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-remove", node = "disk0", name = "b0" },
                new { type = "bitmap-merge", node = "disk0", name = "t", sources = new[] { new { name = "b0" } } },
            },
        }, 409, "bitmap-busy");
        Assert.Equal(1, (int?)problem["actionIndex"]);
        await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
    }

    [Fact]
    public async Task Malformed_actions_are_invalid_requests()
    {
        await Http.PostProblemAsync("/api/v1/transactions", new { }, 400, "invalid-request");
        await Http.PostProblemAsync("/api/v1/transactions", new { actions = new object[] { new { type = "format-disk", node = "disk0" } } }, 400, "invalid-request");
        await Http.PostProblemAsync("/api/v1/transactions", new { actions = new object[] { new { type = "bitmap-add", node = "disk0" } } }, 400, "invalid-request");
        var empty = await Http.PostJsonAsync("/api/v1/transactions", new { actions = Array.Empty<object>() });
        Assert.Empty(empty["results"]!.AsArray());
    }

    [Fact]
    public async Task Writes_wait_while_a_transaction_runs_and_are_never_half_recorded()
    {
        // Concurrent writers and copy-and-clear transactions: every write lands in exactly one of the
        // two bitmaps (before the transaction in 'copy', after it in 'b0'), never in neither.
        await Http.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/b0/clear", new { });
        var writes = Enumerable.Range(0, 64).Select(i => Http.WriteAsync("disk0", i * 4 * G, new byte[512]));
        var txs = Enumerable.Range(0, 8).Select(async i =>
        {
            await Http.PostJsonAsync("/api/v1/transactions", new
            {
                actions = new object[]
                {
                    new { type = "bitmap-add", node = "disk0", name = $"copy{i}" },
                    new { type = "bitmap-merge", node = "disk0", name = $"copy{i}", sources = new[] { new { name = "b0" } } },
                    new { type = "bitmap-clear", node = "disk0", name = "b0" },
                    new { type = "bitmap-disable", node = "disk0", name = $"copy{i}" },
                },
            });
        });
        await Task.WhenAll(writes.Concat(txs));
        var union = new HashSet<long>();
        foreach (var name in Enumerable.Range(0, 8).Select(i => $"copy{i}").Append("b0"))
        {
            foreach (var (off, len) in ApiClient.Extents(await Http.GetJsonAsync($"/api/v1/nodes/disk0/bitmaps/{name}/extents")))
            {
                for (var o = off; o < off + len; o += G)
                    union.Add(o);
            }
        }
        Assert.Equal(Enumerable.Range(0, 64).Select(i => i * 4 * G).ToHashSet(), union);
    }
}
