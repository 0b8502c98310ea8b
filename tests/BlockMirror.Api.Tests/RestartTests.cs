using System.Net;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

public sealed class RestartTests : IDisposable
{
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-restart-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task Clean_restart_restores_nodes_and_persistent_bitmaps_exactly()
    {
        string sha;
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", 32L << 20);
            await http.AddBitmapAsync("disk0", "keep", 4096, persistent: true);
            await http.AddBitmapAsync("disk0", "off", persistent: true, disabled: true);
            await http.AddBitmapAsync("disk0", "gone");
            foreach (var offset in new long[] { 0, 5 * G + 17, 300 * G, (32L << 20) - 1000 })
                await http.WriteAsync("disk0", offset, new byte[1000]);
            sha = (string)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/keep/sha256"))["sha256"]!;
        }

        await using (var second = new BlockMirrorFactory(_dir))
        {
            var http = second.CreateClient();
            var node = await http.GetJsonAsync("/api/v1/nodes/disk0");
            Assert.Equal(["keep", "off"], node["bitmaps"]!.AsArray().Select(b => (string)b!).ToArray());
            var keep = await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/keep");
            Assert.False((bool)keep["inconsistent"]!);
            Assert.Null(keep["inconsistentReason"]);
            Assert.True((bool)keep["recording"]!);
            Assert.True((bool)keep["persistent"]!);
            Assert.Equal(4096, (long)keep["granularity"]!);
            Assert.Equal(sha, (string)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/keep/sha256"))["sha256"]!);
            Assert.False((bool)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/off"))["recording"]!);
            using var gone = await http.GetAsync("/api/v1/nodes/disk0/bitmaps/gone");
            await ApiClient.ExpectProblemAsync(gone, 404, "bitmap-not-found");
            // It keeps recording after the restart.
            await http.WriteAsync("disk0", 100 * G, new byte[1]);
            Assert.NotEqual(sha, (string)(await http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/keep/sha256"))["sha256"]!);
        }
    }

    [Fact]
    public async Task Unclean_stop_restores_persistent_bitmaps_exactly_from_the_journal()
    {
        string shaP, shaQ;
        // One-granule extents: the activity log is exact, which this test compares against (coarse extents: ActivityLogTests, the crash harness).
        await using (var first = new BlockMirrorFactory(_dir, new Dictionary<string, string?> { ["Bitmaps:ActivityLogExtentBytes"] = "512" }))
        {
            var http = first.CreateClient();
            await CrashWorkloadAsync(http);
            shaP = await ShaAsync(http, "p");
            shaQ = await ShaAsync(http, "q");
            // Simulate kill -9: copy the database and its bitmap journal while the service owns the
            // bitmaps (in-use set, the writes only in the journal), as a crashed process leaves them.
            SimulateCrash(_dir, CrashDir);
        }
        MoveImage();

        await using var second = new BlockMirrorFactory(CrashDir);
        var h = second.CreateClient();
        foreach (var (name, sha) in new[] { ("p", shaP), ("q", shaQ) })
        {
            var b = await h.GetJsonAsync($"/api/v1/nodes/disk0/bitmaps/{name}");
            Assert.False((bool)b["inconsistent"]!, name);
            Assert.True((bool)b["recording"]!, name);
            Assert.Equal(sha, await ShaAsync(h, name));
        }
        Assert.Equal([(0L, G), (5 * G, 2 * G), (100 * G, G)], ApiClient.Extents(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p/extents")));
        // Fully usable: it records, and it can be cleared.
        await h.WriteAsync("disk0", 50 * G, new byte[1]);
        Assert.True((long)(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["count"]! == 5 * G);
        Assert.Equal(0, (long)(await h.PostJsonAsync("/api/v1/nodes/disk0/bitmaps/p/clear", new { }))["count"]!);
    }

    [Theory]
    [InlineData("flipped byte")]
    [InlineData("segment deleted")]
    public async Task After_an_unclean_stop_a_damaged_journal_makes_bitmaps_inconsistent_and_says_why_across_restarts(string damage)
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            await CrashWorkloadAsync(first.CreateClient());
            SimulateCrash(_dir, CrashDir);
        }
        MoveImage();
        var segment = Directory.GetFiles(CrashDir, "blockmirror.db.bitmaps.*.seg").Single();
        if (damage == "segment deleted")
        {
            File.Delete(segment);
        }
        else
        {
            // A byte in the middle of the records (past the 24-byte header), not the torn tail a crash leaves.
            var bytes = await File.ReadAllBytesAsync(segment);
            bytes[24 + ((bytes.Length - 24) / 2)] ^= 0x01;
            await File.WriteAllBytesAsync(segment, bytes);
        }

        string reason;
        await using (var second = new BlockMirrorFactory(CrashDir))
        {
            var p = await second.CreateClient().GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
            Assert.True((bool)p["inconsistent"]!);
            Assert.False((bool)p["recording"]!);
            reason = (string)p["inconsistentReason"]!;
            Assert.StartsWith("the bitmap journal is damaged", reason, StringComparison.Ordinal);
        }
        await using var third = new BlockMirrorFactory(CrashDir);
        var again = await third.CreateClient().GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
        Assert.True((bool)again["inconsistent"]!);
        Assert.Equal(reason, (string?)again["inconsistentReason"]);
    }

    [Fact]
    public async Task After_an_unclean_stop_an_image_modified_by_someone_else_makes_its_bitmaps_inconsistent_and_only_removable()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            await CrashWorkloadAsync(first.CreateClient());
            SimulateCrash(_dir, CrashDir);
        }
        MoveImage();
        // Written behind the service's back after it died: nothing can say which granules changed.
        var image = Path.Combine(CrashDir, "images", "disk0.img");
        using (var f = new FileStream(image, FileMode.Open, FileAccess.Write))
        {
            f.Position = 300 * G;
            f.Write([1, 2, 3]);
        }
        File.SetLastWriteTimeUtc(image, DateTime.UtcNow.AddMinutes(1));

        await using var second = new BlockMirrorFactory(CrashDir);
        var h = second.CreateClient();
        var p = await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
        Assert.True((bool)p["inconsistent"]!);
        Assert.False((bool)p["recording"]!);
        await h.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/p/clear", new { }, 409, "bitmap-inconsistent");
        await h.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/p/enable", new { }, 409, "bitmap-inconsistent");
        await h.PostProblemAsync("/api/v1/nodes/disk0/bitmaps/p/disable", new { }, 409, "bitmap-inconsistent");
        using var removed = await h.DeleteAsync("/api/v1/nodes/disk0/bitmaps/p");
        Assert.Equal(HttpStatusCode.NoContent, removed.StatusCode);
    }

    [Fact]
    public async Task After_an_unclean_stop_a_replaced_image_makes_its_bitmaps_inconsistent()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            await CrashWorkloadAsync(first.CreateClient());
            SimulateCrash(_dir, CrashDir);
        }
        // A copy (same bytes, a new file): whatever happened to it on the way cannot be proven.
        Directory.CreateDirectory(Path.Combine(CrashDir, "images"));
        File.Copy(Path.Combine(_dir, "images", "disk0.img"), Path.Combine(CrashDir, "images", "disk0.img"));

        await using var second = new BlockMirrorFactory(CrashDir);
        Assert.True((bool)(await second.CreateClient().GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["inconsistent"]!);
    }

    [Fact]
    public async Task After_an_unclean_stop_without_the_journal_persistent_bitmaps_are_inconsistent()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            await CrashWorkloadAsync(first.CreateClient());
            // Only the database: the journal, and the proof it carried, are lost.
            CopyDatabase(_dir, CrashDir);
        }
        MoveImage();

        await using var second = new BlockMirrorFactory(CrashDir);
        var h = second.CreateClient();
        Assert.True((bool)(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p"))["inconsistent"]!);
        Assert.True((bool)(await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/q"))["inconsistent"]!);
    }

    [Fact]
    public async Task An_image_changed_while_the_service_was_down_makes_its_bitmaps_inconsistent()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", 8L << 20);
            await http.AddBitmapAsync("disk0", "p", persistent: true);
        }
        // Someone writes the image behind the service's back.
        var image = Path.Combine(_dir, "images", "disk0.img");
        using (var f = new FileStream(image, FileMode.Open, FileAccess.Write))
        {
            f.Position = 4096;
            f.Write(new byte[] { 1, 2, 3 });
        }
        File.SetLastWriteTimeUtc(image, DateTime.UtcNow.AddMinutes(1));

        await using var second = new BlockMirrorFactory(_dir);
        var p = await second.CreateClient().GetJsonAsync("/api/v1/nodes/disk0/bitmaps/p");
        Assert.True((bool)p["inconsistent"]!);
    }

    private string CrashDir => Path.Combine(_dir, "crash");

    /// <summary>Two persistent bitmaps (64 KiB and 4 KiB granules), written after their checkpoint at creation.</summary>
    private static async Task CrashWorkloadAsync(HttpClient http)
    {
        await http.CreateNodeAsync("disk0", 8L << 20);
        await http.AddBitmapAsync("disk0", "p", persistent: true);
        await http.AddBitmapAsync("disk0", "q", 4096, persistent: true);
        await http.WriteAsync("disk0", 0, new byte[1]);
        await http.WriteAsync("disk0", 5 * G + 17, new byte[G]);
        await http.WriteAsync("disk0", 100 * G + G - 1, new byte[1]);
    }

    private static async Task<string> ShaAsync(HttpClient http, string bitmap) =>
        (string)(await http.GetJsonAsync($"/api/v1/nodes/disk0/bitmaps/{bitmap}/sha256"))["sha256"]!;

    /// <summary>The image, moved (same file: same inode and mtime) to the crash copy's image root.</summary>
    private void MoveImage()
    {
        Directory.CreateDirectory(Path.Combine(CrashDir, "images"));
        File.Move(Path.Combine(_dir, "images", "disk0.img"), Path.Combine(CrashDir, "images", "disk0.img"));
    }

    /// <summary>What a kill -9 leaves: the database as committed, and the bitmap journal beside it.</summary>
    private static void SimulateCrash(string from, string to)
    {
        CopyDatabase(from, to);
        foreach (var file in Directory.GetFiles(from, "blockmirror.db.bitmaps.*"))
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    private static void CopyDatabase(string from, string to)
    {
        Directory.CreateDirectory(to);
        // A consistent online copy through SQLite's backup API (the WAL holds recent commits).
        using var source = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(from, "blockmirror.db")}");
        using var target = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(to, "blockmirror.db")}");
        source.Open();
        target.Open();
        source.BackupDatabase(target);
    }
}
