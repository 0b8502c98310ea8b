using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// Issue 14: kill -9 of the service while it allocates clusters in qcow2 nodes (a node on a raw
/// backing file, written at random places of a mostly unallocated 64 MiB image, data and zeroes) and
/// while it mirrors one qcow2 node into another. After every kill, with the service dead:
/// <c>qemu-img check</c> finds no corruption in either image (leaked clusters are allowed, as QEMU
/// allows them); after the restart every acknowledged write reads back and is dirty in the node's
/// persistent bitmap, which the image holds in use after every kill (qcow2 bitmaps extension); after
/// a last clean stop the image holds it stored, and a restart finds the image's bits and the service's
/// record equal.
/// </summary>
/// <remarks>
/// Two sequential writers on the two halves of the disk: the kill comes right after an
/// acknowledgement of the first, so the second's write is in flight at the kill (its range may hold
/// old, new or partly new bytes: not checked), and everything else must read exactly as acknowledged.
/// </remarks>
public sealed class Qcow2CrashHarnessTests(ITestOutputHelper output) : IDisposable
{
    private const long Size = 64L << 20;
    private const long Half = Size / 2;
    private const int KillPoints = 12;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-qcow2-crash-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    private string Image(string name) => Path.Combine(_dir, "images", name);

    [QemuImgFact]
    public async Task Kill_9_during_allocating_writes_and_mirrors_leaves_no_corruption_and_no_lost_write()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_CRASH_SEED"), out var s) ? s : 20261202;
        var random = new Random(seed);
        var clock = Stopwatch.StartNew();
        byte[] model = [];
        (long Offset, long Length)? unknown = null;
        var acked = new List<(long Offset, long Length)>();
        long checkedBytes = 0, acks = 0, leaks = 0;
        var mirrorKills = 0;

        for (var life = 0; life <= KillPoints; life++)
        {
            await using var child = await ChildService.StartAsync(_dir);
            var http = child.Http;
            if (life == 0)
            {
                await http.CreateNodeAsync("base", Size, "base.img");
                await http.WriteAsync("base", 0, ApiClient.Pattern((int)(8L << 20), 3));
                await http.WriteAsync("base", 40L << 20, ApiClient.Pattern((int)(8L << 20), 4));
                (await http.DeleteAsync("/api/v1/nodes/base")).Dispose();
                await http.PostJsonAsync("/api/v1/nodes", new { name = "src", driver = "qcow2", path = "src.qcow2", create = new { size = Size, backing = "base.img" } }, HttpStatusCode.Created);
                await http.PostJsonAsync("/api/v1/nodes", new { name = "tgt", driver = "qcow2", path = "tgt.qcow2", create = new { size = Size } }, HttpStatusCode.Created);
                await http.AddBitmapAsync("src", "p1", 65536, persistent: true);
                model = await http.ReadAsync("src", 0, Size);
            }
            else
            {
                // No job shows as running after the restart.
                foreach (var job in (await http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray())
                    Assert.True((string?)job!["status"] == "concluded", $"life {life}: job {job.ToJsonString()}");
                var now = await http.ReadAsync("src", 0, Size);
                for (var i = 0; i < Size; i++)
                {
                    if (unknown is { } u && i >= u.Offset && i < u.Offset + u.Length)
                        continue;
                    if (now[i] != model[i])
                        Assert.Fail($"life {life}: byte {i} of src reads {now[i]}, acknowledged {model[i]}");
                }
                checkedBytes += Size;
                model = now; // the write in flight at the kill is settled now, whichever way
                var bitmap = await http.GetJsonAsync("/api/v1/nodes/src/bitmaps/p1");
                Assert.False((bool)bitmap["inconsistent"]!, $"life {life}: p1 inconsistent: {(string?)bitmap["inconsistentReason"]}");
                var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/p1/extents?offset=0&length={Size}"));
                foreach (var (offset, length) in acked)
                    Assert.True(DirtyExtents.Covered(dirty, offset, length), $"life {life}: p1 lost the acknowledged write {offset}+{length}");
            }
            if (life == KillPoints)
                break;

            var duringMirror = life % 2 == 1;
            if (duringMirror)
            {
                mirrorKills++;
                await http.PostJsonAsync("/api/v1/jobs/mirror",
                    new { id = $"m{life}", device = "src", target = "tgt", sync = random.Next(2) == 0 ? "full" : "top", speed = 4L << 20,
                        copyMode = random.Next(2) == 0 ? "background" : "write-blocking" }, HttpStatusCode.Created);
            }
            var killAt = random.Next(3, 60);
            var first = new SequentialWriter(child, 0, random.Next());
            var second = new SequentialWriter(child, Half, random.Next());
            first.OnAck = count =>
            {
                if (count >= killAt)
                    child.Kill();
            };
            await Task.WhenAll(first.RunAsync(), second.RunAsync());
            await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
            Assert.Empty(first.Errors.Concat(second.Errors));
            foreach (var w in new[] { first, second })
            {
                foreach (var (offset, data) in w.Acked)
                {
                    data.CopyTo(model, offset);
                    acked.Add((offset, data.Length));
                }
                acks += w.Acked.Count;
            }
            unknown = second.InFlight ?? first.InFlight;

            // The service is dead: QEMU's check of both images, as they are on disk.
            foreach (var image in new[] { "src.qcow2", "tgt.qcow2" })
            {
                var (code, text) = await QemuImgFactAttribute.RunAsync("check", "-f", "qcow2", Image(image));
                Assert.True(code is 0 or 3, $"life {life}: qemu-img check {image} exited {code}:\n{text}");
                if (code == 3)
                    leaks++;
            }
            // The image itself says p1 is in use (the service held it): no other program trusts its stale bits.
            var (infoCode, info) = await QemuImgFactAttribute.RunAsync("info", "-U", "--output=json", Image("src.qcow2"));
            Assert.True(infoCode == 0, info);
            Assert.Equal(["in-use", "auto"], BitmapFlags(info, "p1"));
            output.WriteLine($"life {life}: killed {(duringMirror ? "during a mirror" : "during writes")} after {first.Acked.Count}+{second.Acked.Count} acks, in flight {unknown?.ToString() ?? "none"}");
        }
        await AssertImageAndRecordAgreeAfterACleanStopAsync(acked);
        var summary = $"qcow2 crash harness (seed {seed}): {KillPoints} kills ({mirrorKills} during a mirror), {acks} acknowledged writes, " +
            $"{checkedBytes >> 20} MiB compared after restarts, {leaks} checks with leaked clusters only, no corruption; {clock.Elapsed.TotalSeconds:F0} s";
        output.WriteLine(summary);
        Console.WriteLine(summary);
    }

    /// <summary>
    /// The last life stopped cleanly (SIGTERM): the bitmap is stored in the image, not in use, and the
    /// image checks clean of corruption. A restart then finds the image's bits equal to the service's
    /// record (else the bitmap would come back inconsistent: BitmapPersistence's image evidence), with
    /// every acknowledged write of every life dirty.
    /// </summary>
    private async Task AssertImageAndRecordAgreeAfterACleanStopAsync(List<(long Offset, long Length)> acked)
    {
        List<(long, long)> before;
        await using (var child = await ChildService.StartAsync(_dir))
        {
            before = ApiClient.Extents(await child.Http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/p1/extents?offset=0&length={Size}"));
            Assert.Equal(0, await child.TerminateAsync(TimeSpan.FromSeconds(60)));
        }
        var (infoCode, info) = await QemuImgFactAttribute.RunAsync("info", "--output=json", Image("src.qcow2"));
        Assert.True(infoCode == 0, info);
        Assert.Equal(["auto"], BitmapFlags(info, "p1"));
        var (code, text) = await QemuImgFactAttribute.RunAsync("check", "-f", "qcow2", Image("src.qcow2"));
        Assert.True(code is 0 or 3, $"qemu-img check after the clean stop exited {code}:\n{text}");
        await using (var child = await ChildService.StartAsync(_dir))
        {
            var bitmap = await child.Http.GetJsonAsync("/api/v1/nodes/src/bitmaps/p1");
            Assert.False((bool)bitmap["inconsistent"]!, $"after the clean stop: {(string?)bitmap["inconsistentReason"]}");
            var after = ApiClient.Extents(await child.Http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/p1/extents?offset=0&length={Size}"));
            Assert.Equal(before, after);
            foreach (var (offset, length) in acked)
                Assert.True(DirtyExtents.Covered(after, offset, length), $"after the clean stop: p1 lost the acknowledged write {offset}+{length}");
        }
    }

    /// <summary>The flags qemu-img info --output=json lists for a bitmap of the image.</summary>
    private static string[] BitmapFlags(string infoJson, string name)
    {
        using var doc = System.Text.Json.JsonDocument.Parse(infoJson);
        var bitmaps = doc.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("bitmaps");
        var bitmap = bitmaps.EnumerateArray().Single(b => b.GetProperty("name").GetString() == name);
        return [.. bitmap.GetProperty("flags").EnumerateArray().Select(f => f.GetString()!)];
    }

    /// <summary>One writer in one half of the disk, one request at a time (data, or zeroes as a zero write), until the kill.</summary>
    private sealed class SequentialWriter(ChildService child, long start, int seed)
    {
        private readonly Random _random = new(seed);

        public Action<int>? OnAck { get; set; }

        public List<(long Offset, byte[] Data)> Acked { get; } = [];

        public (long Offset, long Length)? InFlight { get; private set; }

        public List<string> Errors { get; } = [];

        public async Task RunAsync()
        {
            await Task.Yield();
            while (!child.Killed)
            {
                // Mostly unaligned ranges at fresh places: most writes allocate clusters (with copy on write from the backing).
                var length = _random.Next(4) == 0 ? 65536 * _random.Next(1, 4) : _random.Next(1, 150_000);
                var offset = start + _random.NextInt64(0, Half - length);
                var zero = _random.Next(6) == 0;
                var data = new byte[length];
                if (!zero)
                    _random.NextBytes(data);
                InFlight = (offset, length);
                HttpResponseMessage response;
                try
                {
                    if (zero)
                    {
                        response = await child.Http.PostAsJsonAsync("/api/v1/nodes/src/zero", new { offset, length, mayUnmap = _random.Next(2) == 0 });
                    }
                    else
                    {
                        using var content = new ByteArrayContent(data);
                        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
                        response = await child.Http.PutAsync($"/api/v1/nodes/src/data?offset={offset}", content);
                    }
                }
                catch (Exception) when (child.Killed)
                {
                    return;
                }
                using (response)
                {
                    if (response.StatusCode != HttpStatusCode.NoContent)
                    {
                        if (!child.Killed)
                            Errors.Add($"{offset}+{length}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
                        return;
                    }
                }
                Acked.Add((offset, data));
                InFlight = null;
                OnAck?.Invoke(Acked.Count);
            }
        }
    }
}
