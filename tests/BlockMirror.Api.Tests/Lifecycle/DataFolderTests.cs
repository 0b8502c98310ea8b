using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;
using Microsoft.Data.Sqlite;

namespace BlockMirror.Api.Tests.Lifecycle;

/// <summary>
/// One process owns a data folder (the database and the bitmap journal beside it), and a database
/// that lost its content is not started as an empty service (issue 10, cases 1 and 7).
/// </summary>
public sealed class DataFolderTests : IDisposable
{
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-folder-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private string Database => Path.Combine(_dir, "blockmirror.db");

    private string[] Segments() => [.. Directory.GetFiles(_dir, "blockmirror.db.bitmaps.*.seg").Order(StringComparer.Ordinal)];

    [Fact]
    public async Task A_second_instance_on_the_same_folder_is_refused_and_the_first_loses_no_acknowledged_granule()
    {
        ChildExit second;
        int firstPid;
        // One-granule extents: the activity log is exact, which this test compares against (coarse extents: ActivityLogTests, the crash harness).
        await using (var first = await ChildService.StartAsync(_dir, "--Bitmaps:ActivityLogExtentBytes", "512"))
        {
            firstPid = first.Pid;
            var http = first.Http;
            await http.CreateNodeAsync("d", 16 * G);
            await http.AddBitmapAsync("d", "p", G, persistent: true);
            for (var g = 0; g < 6; g++)
                await http.WriteAsync("d", g * G + 100, ApiClient.Pattern(4096, (byte)g));
            var segments = Segments();
            Assert.NotEmpty(segments);

            // Another REST address, the same folder: before, its start migrated, checkpointed and
            // restarted the journal (deleting the live segments) under the first instance.
            second = await ChildService.RunToExitAsync(_dir);
            Assert.Equal(segments, Segments());

            for (var g = 6; g < 12; g++)
                await http.WriteAsync("d", g * G + 100, ApiClient.Pattern(4096, (byte)g));
            first.Kill();
            await first.WaitForKillAsync(TimeSpan.FromSeconds(30));
        }

        await using (var restarted = await ChildService.StartAsync(_dir))
        {
            var bitmap = await restarted.Http.GetJsonAsync("/api/v1/nodes/d/bitmaps/p");
            Assert.False((bool)bitmap["inconsistent"]!, restarted.Log);
            Assert.Equal([(0L, 12 * G)], ApiClient.Extents(await restarted.Http.GetJsonAsync("/api/v1/nodes/d/bitmaps/p/extents")));
        }

        Assert.True(second.ExitCode == ExitCodes.InUse, second.ToString());
        var line = Assert.Single(second.StderrLines);
        Assert.Contains(_dir, line, StringComparison.Ordinal);
        Assert.Contains($"pid {firstPid}", line, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", second.Stdout + second.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_in_process_host_on_the_same_folder_is_refused_until_the_first_is_disposed()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await http.CreateNodeAsync("d", 16 * G);
            await using var second = new BlockMirrorFactory(_dir);
            var refused = Assert.ThrowsAny<Exception>(() => second.CreateClient());
            Assert.Contains("is in use by another BlockMirror process", refused.ToString(), StringComparison.Ordinal);
            // The first goes on.
            await http.CreateNodeAsync("e", 16 * G);
        }
        // Released with the host: a restart on the folder one after another works.
        await using var third = new BlockMirrorFactory(_dir);
        var nodes = (await third.CreateClient().GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray();
        Assert.Equal(2, nodes.Count);
    }

    [Theory]
    [InlineData("empty")]
    [InlineData("missing")]
    [InlineData("no-schema")]
    [InlineData("not-sqlite")]
    public async Task A_lost_database_beside_the_journal_files_is_refused_and_left_as_it_is(string damage)
    {
        await using (var ran = new BlockMirrorFactory(_dir))
        {
            var http = ran.CreateClient();
            await http.CreateNodeAsync("d", 16 * G);
            await http.AddBitmapAsync("d", "p", G, persistent: true);
            await http.WriteAsync("d", 100, new byte[10]);
        }
        SqliteConnection.ClearAllPools();
        File.Delete(Database + "-wal");
        File.Delete(Database + "-shm");
        switch (damage)
        {
            case "empty":
                File.WriteAllBytes(Database, []);
                break;
            case "missing":
                File.Delete(Database);
                break;
            case "no-schema":
                File.Delete(Database);
                using (var db = new SqliteConnection($"Data Source={Database};Pooling=False"))
                {
                    db.Open();
                    using var create = db.CreateCommand();
                    create.CommandText = "CREATE TABLE unrelated (x INTEGER)";
                    create.ExecuteNonQuery();
                }
                break;
            case "not-sqlite":
                File.WriteAllBytes(Database, [.. Enumerable.Repeat((byte)0x5a, 8192)]);
                break;
        }
        var before = File.Exists(Database) ? File.ReadAllBytes(Database) : null;
        var journal = Directory.GetFiles(_dir, "blockmirror.db.bitmaps.*").Order(StringComparer.Ordinal).ToArray();
        Assert.Contains(journal, f => f.EndsWith(".alive", StringComparison.Ordinal));

        var exit = await ChildService.RunToExitAsync(_dir);

        Assert.True(exit.ExitCode == ExitCodes.DataRefused, exit.ToString());
        var line = Assert.Single(exit.StderrLines);
        Assert.Contains(Database, line, StringComparison.Ordinal);
        Assert.Contains("blockmirror.db.bitmaps.", line, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", exit.Stdout + exit.Stderr, StringComparison.Ordinal);
        // Nothing touched: the database as it was, the journal's files all there.
        Assert.Equal(before, File.Exists(Database) ? File.ReadAllBytes(Database) : null);
        Assert.Equal(journal, Directory.GetFiles(_dir, "blockmirror.db.bitmaps.*").Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public async Task Removing_the_journal_files_of_a_lost_database_starts_empty_on_purpose()
    {
        await using (var ran = new BlockMirrorFactory(_dir))
            await ran.CreateClient().CreateNodeAsync("d", 16 * G);
        SqliteConnection.ClearAllPools();
        File.WriteAllBytes(Database, []);
        foreach (var f in Directory.GetFiles(_dir, "blockmirror.db*").Where(f => f != Database && !f.EndsWith(".lock", StringComparison.Ordinal)))
            File.Delete(f);

        await using var fresh = new BlockMirrorFactory(_dir);
        Assert.Empty((await fresh.CreateClient().GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray());
    }
}
