using System.Net;
using System.Net.Http.Headers;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// kill -9 after the storage failed under the service (issue 10, items 4 and 9): right after a pivot
/// whose store failed (the database files immutable during <c>complete</c>), and after the bitmap
/// journal's folder ran full and came back. The next life finds the device on its old image and no
/// acknowledged granule lost.
/// </summary>
public sealed class StorageFaultCrashTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private const long G = 65536;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-crash-storage-").FullName;
    private ImmutableDatabase? _database;
    private readonly List<TmpfsMount> _mounts = [];

    private ImmutableDatabase Database => _database ??= new(_dir);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        Database.Heal();
        foreach (var mount in Enumerable.Reverse(_mounts))
            await mount.DisposeAsync();
        BlockMirrorFactory.DeleteDir(_dir);
    }

    [ChattrFact]
    public async Task Kill_9_right_after_a_failing_pivot_store_keeps_the_device_on_its_image_and_every_acknowledged_granule()
    {
        const int kills = 4;
        var seed = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_CRASH_SEED"), out var s) ? s : 20261202;
        var random = new Random(seed);
        var acked = new AckedWrites("p1");
        // The writers stay out of the last granule: a marker written there after each failed pivot must read back after the kill.
        var markerOffset = Size - G;
        byte[]? marker = null;
        long checks = 0;
        var exported = false;
        for (var life = 0; life <= kills; life++)
        {
            await using var child = await ChildService.StartAsync(_dir);
            var http = child.Http;
            if (life == 0)
            {
                await http.CreateNodeAsync("src", Size);
                await http.CreateNodeAsync("tgt", Size);
                await http.AddBitmapAsync("src", "p1", G, persistent: true);
            }
            else
            {
                // The pivot never happened: src on its own file with everything written after it, tgt still a node.
                Assert.Equal("src.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/src"))["path"]);
                Assert.Equal("tgt.img", (string?)(await http.GetJsonAsync("/api/v1/nodes/tgt"))["path"]);
                Assert.Equal(marker, await http.ReadAsync("src", markerOffset, marker!.Length));
                foreach (var job in (await http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray())
                    Assert.Equal("concluded", (string?)job!["status"]);
                var p1 = await http.GetJsonAsync("/api/v1/nodes/src/bitmaps/p1");
                Assert.False((bool)p1["inconsistent"]!, $"life {life}: p1 came back inconsistent\n{child.Log}");
                var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/p1/extents?offset=0&length={Size}"));
                foreach (var (offset, length) in acked.Of("p1"))
                {
                    checks++;
                    Assert.True(DirtyExtents.Covered(dirty, offset, length), $"life {life}: p1 lost the acknowledged write {offset}+{length}");
                }
            }
            if (life == kills)
                break;

            await using var events = await EventWaiter.StartAsync(http);
            var export = await child.ExportAsync("e", "src", exported);
            exported = true;
            await using var nbd = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!));
            var writers = new CrashWriters(child, nbd, "src", Size - G, acked, seed * 1000 + life);
            writers.Start(httpWriters: 1, nbdWriters: 1);
            var id = $"m{life}";
            await http.PostJsonAsync("/api/v1/jobs/mirror", new { id, device = "src", target = "tgt", sync = "full", copyMode = random.Next(2) == 0 ? "background" : "write-blocking" }, HttpStatusCode.Created);
            await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == id);

            // The pivot's store fails with the writers running; the job must say so.
            Database.Fail();
            await http.PostJsonAsync($"/api/v1/jobs/{id}/complete", new { });
            var done = await events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == id);
            Assert.Contains("could not be stored", (string?)done.Data["error"]);
            marker = ApiClient.Pattern((int)G, (byte)(life + 1));
            await http.WriteAsync("src", markerOffset, marker);

            // Every other life the database comes back before the kill, else the kill finds it still refusing.
            if (life % 2 == 1)
                Database.Heal();
            var killAt = writers.Acks + random.Next(1, 40);
            writers.OnAck = count =>
            {
                if (count >= killAt)
                    child.Kill();
            };
            await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
            await writers.StopAsync();
            Assert.Empty(writers.Errors);
            Database.Heal();
            output.WriteLine($"life {life}: pivot store failed ({done.Data["error"]}), killed after {writers.Acks} acks");
        }
        output.WriteLine($"{kills} kills right after a failing pivot store, {acked.Total} acknowledged writes, {checks} checks after restarts");
    }

    [TmpfsFact]
    public async Task A_full_database_folder_refuses_new_granules_until_space_returns_and_a_kill_after_loses_none()
    {
        // The database and journal on a small tmpfs, the images on their own.
        _mounts.Add(await TmpfsMount.MountAsync(_dir, "16m"));
        var images = Path.Combine(_dir, "images");
        Directory.CreateDirectory(images);
        _mounts.Add(await TmpfsMount.MountAsync(images, "64m"));
        var acked = new List<long>();
        var filler = Path.Combine(_dir, "filler");
        long refused;
        // One-granule extents: every new granule needs the journal, which is what the full disk refuses.
        await using (var child = await ChildService.StartAsync(_dir, "--Bitmaps:ActivityLogExtentBytes", "512"))
        {
            var http = child.Http;
            await http.CreateNodeAsync("disk", 64L << 20);
            await http.AddBitmapAsync("disk", "p", G, persistent: true);
            for (var k = 0L; k < 10; k++)
                await WriteGranuleAsync(http, k, acked);
            Fill(filler);

            // A write to a new granule needs the journal: refused (once the segment's last page is used up), before it reaches the image.
            refused = -1;
            for (var k = 10L; k < 1024 && refused < 0; k++)
            {
                using var response = await PutAsync(http, k);
                if (response.StatusCode == HttpStatusCode.NoContent)
                    acked.Add(k);
                else
                {
                    await ApiClient.ExpectProblemAsync(response, 503, "storage-unavailable");
                    refused = k;
                }
            }
            Assert.True(refused > 0, "no write was refused on a full file system");
            Assert.Equal(new byte[4096], await http.ReadAsync("disk", refused * G, 4096));
            // A granule already durable needs no journal.
            await WriteGranuleAsync(http, 0, acked);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, await HealthAsync(http));

            File.Delete(filler);
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (await HealthAsync(http) != HttpStatusCode.OK)
            {
                Assert.True(DateTime.UtcNow < deadline, $"/healthz stayed unhealthy after space returned:\n{child.Log}");
                await Task.Delay(100);
            }
            for (var k = refused; k < refused + 20; k++)
                await WriteGranuleAsync(http, k, acked);
            child.Kill();
            await child.WaitForKillAsync(TimeSpan.FromSeconds(30));
        }

        await using (var child = await ChildService.StartAsync(_dir))
        {
            var http = child.Http;
            var p = await http.GetJsonAsync("/api/v1/nodes/disk/bitmaps/p");
            Assert.False((bool)p["inconsistent"]!, child.Log);
            var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/disk/bitmaps/p/extents?offset=0&length={64L << 20}"));
            foreach (var k in acked)
                Assert.True(DirtyExtents.Covered(dirty, k * G, 4096), $"granule {k} was acknowledged and is not dirty after the kill");
            Assert.Equal(Data(refused), await http.ReadAsync("disk", refused * G, 4096));
            output.WriteLine($"refused at granule {refused}; {acked.Count} acknowledged granule writes all dirty after the kill");
        }
    }

    private static byte[] Data(long granule) => ApiClient.Pattern(4096, (byte)(granule + 1));

    private static async Task<HttpResponseMessage> PutAsync(HttpClient http, long granule)
    {
        using var content = new ByteArrayContent(Data(granule));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        return await http.PutAsync($"/api/v1/nodes/disk/data?offset={granule * G}", content);
    }

    private static async Task WriteGranuleAsync(HttpClient http, long granule, List<long> acked)
    {
        using var response = await PutAsync(http, granule);
        await ApiClient.ExpectAsync(response, HttpStatusCode.NoContent);
        acked.Add(granule);
    }

    private static async Task<HttpStatusCode> HealthAsync(HttpClient http)
    {
        using var response = await http.GetAsync("/healthz");
        return response.StatusCode;
    }

    /// <summary>Writes <paramref name="path"/> until the file system is full (a tmpfs counts every page written).</summary>
    private static void Fill(string path)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None);
        foreach (var chunk in new[] { 1 << 20, 4096 })
        {
            var data = new byte[chunk];
            Array.Fill(data, (byte)0xA5);
            try
            {
                while (true)
                    file.Write(data);
            }
            catch (IOException)
            {
            }
        }
    }
}
