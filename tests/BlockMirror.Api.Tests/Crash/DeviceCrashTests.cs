using System.Net;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;
using BlockMirror.Tests.Shared;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// The crash harness on a node that sits on a block device (a loop device): persistent bitmaps are
/// exact across kill -9 there as on files. The proof rules at a restart stamp the device node in
/// /dev (its mtime, which the node's own writes move; its inode), so this is what shows that the
/// stamps of a device neither refuse a bitmap the journal proves nor miss a granule. Each life
/// writes through HTTP and NBD (data, zeroes, trims) and is killed at a seeded acknowledgement; the
/// next life finds every acknowledged granule dirty and the bitmap consistent.
/// </summary>
public sealed class DeviceCrashTests(ITestOutputHelper output) : IDisposable
{
    private const long Size = 32L << 20;
    private const int Kills = 3;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-crash-device-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [LoopDeviceFact]
    public async Task Kill_9_during_writes_to_a_device_node_loses_no_acknowledged_granule()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_CRASH_SEED"), out var s) ? s : 20261202;
        var random = new Random(seed);
        var acked = new AckedWrites("pd");
        await using var loop = await LoopDevice.AttachAsync(_dir, Size);
        string[] settings = ["--Storage:Devices:0", loop.Device];
        long checks = 0;

        var exported = false;

        for (var life = 0; life <= Kills; life++)
        {
            await using var child = await ChildService.StartAsync(_dir, settings);
            var http = child.Http;
            if (life == 0)
            {
                var node = await http.PostJsonAsync("/api/v1/nodes", new { name = "dev", driver = "raw", path = loop.Device }, HttpStatusCode.Created);
                Assert.True((bool)node["device"]!);
                await http.AddBitmapAsync("dev", "pd", 65536, persistent: true);
            }
            else
            {
                var doc = await http.GetJsonAsync("/api/v1/nodes/dev/bitmaps/pd");
                Assert.False((bool)doc["inconsistent"]!, $"life {life}: pd came back inconsistent: {doc["inconsistentReason"]}\n{child.Log}");
                var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/dev/bitmaps/pd/extents?offset=0&length={Size}"));
                foreach (var write in acked.Of("pd"))
                {
                    checks++;
                    Assert.True(DirtyExtents.Covered(dirty, write.Offset, write.Length), $"life {life}: pd lost the acknowledged write {write.Offset}+{write.Length}");
                }
                if (life == Kills)
                    break;
            }

            var export = await child.ExportAsync("e", "dev", exported);
            exported = true;
            await using var nbd = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!));
            var writers = new CrashWriters(child, nbd, "dev", Size, acked, seed * 1000 + life);
            var killAt = random.Next(10, 200);
            writers.OnAck = count =>
            {
                if (count >= killAt)
                    child.Kill();
            };
            writers.Start(httpWriters: 2, nbdWriters: 1);
            await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
            await writers.StopAsync();
            Assert.Empty(writers.Errors);
            output.WriteLine($"life {life}: killed at acknowledgement {killAt} ({writers.Acks} answered)");
        }

        var summary = $"device crash harness (seed {seed}): {Kills} kills during writes to a loop-device node, {checks} write×bitmap checks after restarts, none lost";
        output.WriteLine(summary);
        Console.WriteLine(summary);
    }
}
