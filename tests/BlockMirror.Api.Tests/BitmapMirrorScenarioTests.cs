using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Port of QEMU's bitmap-mirror iotest (qemu-semantics f.1): a 64 MiB image, 64 KiB granularity,
/// four write groups, three bitmap modes, success and "simulated failure" (the job cancelled in
/// pending instead of finalized), with the expected bitmap counts at every step.
/// </summary>
public sealed class BitmapMirrorScenarioTests() : ServiceTest(watchEvents: true)
{
    private const long G = 65536;
    private const long Size = 64L << 20;
    private int _targets;

    private static readonly (byte Pattern, long Offset, long Length)[] Group0 =
        [(0x49, 0x0, G), (0x6c, 0x100000, G), (0x6f, 0x2000000, G), (0x76, 0x3ff0000, G)];
    private static readonly (byte Pattern, long Offset, long Length)[] Group1 =
        [(0x65, 0x0, G), (0x77, 0xf8000, G), (0x72, 0x2008000, G), (0x69, 0x3fe0000, G)];
    private static readonly (byte Pattern, long Offset, long Length)[] Group2 =
        [(0x74, 0x10000, G), (0x69, 0xe8000, G), (0x6e, 0x2018000, G), (0x67, 0x3fe0000, 2 * G)];
    private static readonly (byte Pattern, long Offset, long Length)[] Group3 =
        [(0xaa, 0x10000, 3 * G), (0xbb, 0xd8000, G), (0xcc, 0x2028000, G), (0xdd, 0x3fc0000, G)];

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("drive0", Size);
    }

    private async Task WriteGroupAsync((byte Pattern, long Offset, long Length)[] group)
    {
        foreach (var (pattern, offset, length) in group)
            await Http.WriteAsync("drive0", offset, Enumerable.Repeat(pattern, (int)length).ToArray());
    }

    private async Task<long> CountAsync() => (long)(await Http.GetJsonAsync("/api/v1/nodes/drive0/bitmaps/bitmap0"))["count"]!;

    /// <summary>A mirror with bitmap0 into a fresh target; returns when the job is gone.</summary>
    private async Task BitmapMirrorAsync(string mode, bool fail, Func<Task>? duringJob = null)
    {
        var id = $"m{++_targets}";
        await Http.CreateNodeAsync($"t{_targets}", Size);
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new
        {
            id, device = "drive0", target = $"t{_targets}", sync = "full", bitmap = "bitmap0", bitmapMode = mode,
            autoFinalize = false, speed = duringJob is null ? 0 : 1,
        }, HttpStatusCode.Created);
        if (duringJob is not null)
        {
            await Events.WaitStatusAsync(id, "running");
            var info = await Http.GetJsonAsync("/api/v1/nodes/drive0/bitmaps/bitmap0");
            Assert.Equal(mode == "always", (bool)info["busy"]!);
            await duringJob();
            using var _ = await Http.PatchAsJsonAsync($"/api/v1/jobs/{id}", new { speed = 0 });
        }
        await Events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == id);
        await Http.PostJsonAsync($"/api/v1/jobs/{id}/complete", new { });
        await Events.WaitAsync("BLOCK_JOB_PENDING", d => (string?)d["id"] == id);
        if (fail)
        {
            await Http.PostJsonAsync($"/api/v1/jobs/{id}/cancel", new { force = true });
            await Events.WaitAsync("BLOCK_JOB_CANCELLED", d => (string?)d["id"] == id);
        }
        else
        {
            await Http.PostJsonAsync($"/api/v1/jobs/{id}/finalize", new { });
            await Events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == id);
        }
        await Events.WaitStatusAsync(id, "null");
    }

    [Theory]
    [InlineData("never", false)]
    [InlineData("never", true)]
    [InlineData("on-success", false)]
    [InlineData("on-success", true)]
    [InlineData("always", false)]
    [InlineData("always", true)]
    public async Task Bitmap_counts_follow_QEMU_at_every_step(string mode, bool fail)
    {
        await WriteGroupAsync(Group0);
        await Http.AddBitmapAsync("drive0", "bitmap0", G);
        await WriteGroupAsync(Group1);
        Assert.Equal(6 * G, await CountAsync());

        // Test mirror #1.
        await BitmapMirrorAsync(mode, fail);
        var afterFirst = (mode, fail) switch
        {
            ("never", _) => 6,
            ("on-success", false) => 0,
            ("on-success", true) => 6,
            _ => 0, // always: everything was copied before the cancel
        };
        Assert.Equal(afterFirst * G, await CountAsync());

        // Test mirror #2, with group 2 written while it runs.
        await BitmapMirrorAsync(mode, fail: false, duringJob: () => WriteGroupAsync(Group2));
        Assert.Equal(mode == "never" ? 10 * G : 0, await CountAsync());

        await WriteGroupAsync(Group3);
        Assert.Equal(mode == "never" ? 15 * G : 8 * G, await CountAsync());

        // Test mirror #3 (recovery) into a fresh target, completed: the device pivots onto that
        // target, which holds exactly the dirty granules, byte for byte.
        var dirty = ApiClient.Extents(await Http.GetJsonAsync("/api/v1/nodes/drive0/bitmaps/bitmap0/extents"));
        var expected = new List<byte[]>();
        foreach (var (offset, length) in dirty)
            expected.Add(await Http.ReadAsync("drive0", offset, length));
        await BitmapMirrorAsync(mode, fail: false);
        Assert.Equal(mode == "never" ? 15 * G : 0, await CountAsync());
        Assert.Equal("t3.img", (string?)(await Http.GetJsonAsync("/api/v1/nodes/drive0"))["path"]);
        for (var i = 0; i < dirty.Count; i++)
            Assert.Equal(expected[i], await Http.ReadAsync("drive0", dirty[i].Offset, dirty[i].Length));
        Assert.Equal(dirty.Sum(d => d.Length), (await Http.GetJsonAsync("/api/v1/nodes/drive0/extents"))["items"]!.AsArray()
            .Where(e => (string?)e!["type"] == "data").Sum(e => (long)e!["length"]!));

        using var removed = await Http.DeleteAsync("/api/v1/nodes/drive0/bitmaps/bitmap0");
        Assert.Equal(HttpStatusCode.NoContent, removed.StatusCode);
        Assert.Empty((await Http.GetJsonAsync("/api/v1/nodes/drive0/bitmaps"))["items"]!.AsArray());
    }
}
