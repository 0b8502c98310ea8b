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
    public async Task Unclean_stop_leaves_persistent_bitmaps_inconsistent_and_only_removable()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("disk0", 8L << 20);
            await http.AddBitmapAsync("disk0", "p", persistent: true);
            await http.WriteAsync("disk0", 0, new byte[1]);
            // Simulate kill -9: copy the database while the service owns the bitmap (in-use set),
            // as a crashed process would leave it.
            CopyDatabase(_dir, Path.Combine(_dir, "crash"));
        }
        var crashDir = Path.Combine(_dir, "crash");
        Directory.CreateDirectory(Path.Combine(crashDir, "images"));
        File.Copy(Path.Combine(_dir, "images", "disk0.img"), Path.Combine(crashDir, "images", "disk0.img"));

        await using var second = new BlockMirrorFactory(crashDir);
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
