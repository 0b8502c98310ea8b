using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// DESIGN.md "Reliability": kill -9 at any moment, then after restart the database is intact, no
/// job shows as running, persistent bitmaps are exact, and a completed mirror's target equals the
/// source. The service runs as a child process; each life ends with SIGKILL at a seeded point
/// (<see cref="KillPoint"/>, also around a second instance's start on the same folder, which must be
/// refused while this one lives), the next life checks what the last one acknowledged.
/// </summary>
/// <remarks>
/// Node <c>src</c> (8 MiB) has two persistent bitmaps: <c>p1</c> (64 KiB) is the working bitmap of
/// every mirror to <c>tgt</c> (bitmapMode always), <c>p2</c> (4 KiB) is cleared by transactions. From
/// the first write on, p1 holds every granule where tgt may differ from src, so each life starts by
/// mirroring with whatever p1 survived and proving tgt == src: the resume after a crashed mirror.
/// An acknowledged write must be dirty in p1 after a crash even if a running write-blocking mirror
/// had already copied it: a job's clears only become durable at its exit (a stale bit costs a re-copy).
/// </remarks>
public sealed class CrashHarnessTests(ITestOutputHelper output) : IDisposable
{
    private const long Size = 8L << 20;
    private const int KillPoints = 20;

    // The activity log at a scale where 8 MiB holds 32 extents and only 4 per bitmap stay hot, so
    // the workload keeps evicting (retired extents must come back exactly, hot ones whole), and what a
    // crash may add is bounded by 4 × 256 KiB per bitmap.
    private const long ExtentBytes = 256 << 10;
    private const int HotExtents = 4;
    private const long SupersetBound = HotExtents * ExtentBytes;
    private static readonly string[] ActivityLog =
        ["--Bitmaps:ActivityLogExtentBytes", $"{ExtentBytes}", "--Bitmaps:ActivityLogHotExtents", $"{HotExtents}"];
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-crash-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task Kill_9_at_seeded_points_loses_no_acknowledged_granule_and_no_mirror()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_CRASH_SEED"), out var s) ? s : 20261126;
        var random = new Random(seed);
        var acked = new AckedWrites("p1", "p2");
        var clock = Stopwatch.StartNew();
        string? targetHash = null;
        var existing = new HashSet<string>(StringComparer.Ordinal);
        var removed = new HashSet<string>(StringComparer.Ordinal);
        long largestSuperset = 0;
        long checks = 0, lost = 0, resumed = 0, targetsChecked = 0, pivots = 0, refusedSeconds = 0, startedSeconds = 0;
        string? newTarget = null;
        var kills = new Dictionary<KillPoint, int>();

        // One more start than kills: the last life only checks what the last kill left.
        var exported = false;
        for (var life = 0; life <= KillPoints; life++)
        {
            var lifeClock = Stopwatch.StartNew();
            await using var child = await ChildService.StartAsync(_dir, ActivityLog);
            var started = lifeClock.Elapsed;
            var http = child.Http;
            if (life == 0)
            {
                await http.CreateNodeAsync("src", Size);
                await http.CreateNodeAsync("tgt", Size);
                await http.AddBitmapAsync("src", "p1", 65536, persistent: true);
                await http.AddBitmapAsync("src", "p2", 4096, persistent: true);
            }
            else
            {
                // No job shows as running: the recovery concluded (and, auto-dismiss, removed) them.
                foreach (var job in (await http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray())
                    Assert.True((string?)job!["status"] == "concluded", $"life {life}: job {job.ToJsonString()}");
                foreach (var bitmap in new[] { "p1", "p2" })
                {
                    var doc = await http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/{bitmap}");
                    Assert.False((bool)doc["inconsistent"]!, $"life {life}: {bitmap} came back inconsistent\n{child.Log}");
                    var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/{bitmap}/extents?offset=0&length={Size}"));
                    foreach (var write in acked.Of(bitmap))
                    {
                        checks++;
                        if (!DirtyExtents.Covered(dirty, write.Offset, write.Length))
                        {
                            lost++;
                            output.WriteLine($"life {life}: {bitmap} lost the acknowledged write {write.Offset}+{write.Length}");
                        }
                    }
                }
                // What the kill added beyond the written granules: at most the hot extents, per bitmap.
                var superset = await RecoverySupersetAsync(http);
                Assert.True(superset.ContainsKey("p1") && superset.ContainsKey("p2"), $"life {life}: no recovery superset reported for p1 and p2");
                foreach (var (bitmap, bytes) in superset)
                {
                    Assert.InRange(bytes, 0, SupersetBound);
                    largestSuperset = Math.Max(largestSuperset, bytes);
                }
                output.WriteLine($"life {life}: recovery superset {string.Join(", ", superset.Select(x => $"{x.Key} {x.Value >> 10} KiB"))} (bound {SupersetBound >> 10} KiB per bitmap)");
                foreach (var name in existing)
                    Assert.False((bool)(await http.GetJsonAsync($"/api/v1/nodes/src/bitmaps/{name}"))["inconsistent"]!);
                foreach (var name in removed)
                {
                    using var gone = await http.GetAsync($"/api/v1/nodes/src/bitmaps/{name}");
                    Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
                }
                if (targetHash is not null)
                {
                    // The mirror that concluded before the kill left tgt equal to src as it was then.
                    Assert.Equal(targetHash, await HashAsync(http, "tgt"));
                    targetsChecked++;
                }
            }
            Assert.Equal(0, lost);
            // Whatever an operation that could clear p2 left undecided is settled by now.
            acked.Resume("p2");

            await using var events = await EventWaiter.StartAsync(http);
            if (newTarget is not null)
            {
                // A pivot consumed tgt: a fresh one on a new file, given everything first (a full
                // mirror, soft-cancelled; p1 untouched), since the resume copies only what p1 holds.
                await http.CreateNodeAsync("tgt", Size, newTarget);
                await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = $"f{life}", sync = "full", device = "src", target = "tgt" }, HttpStatusCode.Created);
                await FinishMirrorAsync(http, events, $"f{life}", acked);
                newTarget = null;
            }
            // Resume: a new mirror with the bitmap that survived brings tgt to src.
            await StartMirrorAsync(http, $"resume{life}", "background", 0);
            targetHash = await FinishMirrorAsync(http, events, $"resume{life}", acked);
            resumed++;
            var checkedAt = lifeClock.Elapsed;
            if (life == KillPoints)
                break;

            var export = await child.ExportAsync("e", "src", exported);
            exported = true;
            await using var nbd = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!));
            var writers = new CrashWriters(child, nbd, "src", Size, acked, seed * 1000 + life);
            var point = (KillPoint)(life % 6);
            Func<string> note = () => "";
            kills[point] = kills.GetValueOrDefault(point) + 1;
            switch (point)
            {
                case KillPoint.DuringWrites:
                    KillAtAck(child, writers, random.Next(20, 300));
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    break;

                case KillPoint.RightAfterAnAcknowledgedWrite:
                    KillAtAck(child, writers, random.Next(1, 60));
                    writers.Start(httpWriters: life % 2, nbdWriters: 1 - life % 2);
                    break;

                case KillPoint.DuringAMirror:
                {
                    // Some megabytes dirty first, so that a mirror limited to 1 MiB/s is still copying
                    // when the kill comes (unlimited, it is ready within milliseconds).
                    var dirtied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    var dirtyAt = random.Next(60, 160);
                    writers.OnAck = count =>
                    {
                        if (count >= dirtyAt)
                            dirtied.TrySetResult();
                    };
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    await dirtied.Task.WaitAsync(TimeSpan.FromSeconds(60));
                    targetHash = null;
                    await StartMirrorAsync(http, $"m{life}", random.Next(2) == 0 ? "background" : "write-blocking", random.Next(3) == 0 ? 0 : 1L << 20);
                    KillAtAck(child, writers, writers.Acks + random.Next(5, 200));
                    var id = $"m{life}";
                    note = () => events.Events.Any(e => e.Name == "BLOCK_JOB_READY" && (string?)e.Data["id"] == id) ? " (mirror ready)" : " (mirror still copying)";
                    break;
                }

                case KillPoint.AfterACompletedMirror:
                {
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    targetHash = null;
                    // Every other time a mirror without a bitmap, completed with a pivot: src moves onto
                    // tgt's file and keeps p1/p2 (both just recording), which must come back consistent
                    // after the kill (checked at the next start); tgt is consumed.
                    var pivot = life / 5 % 2 == 1;
                    var copyMode = random.Next(2) == 0 ? "background" : "write-blocking";
                    if (pivot)
                        await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = $"m{life}", sync = "full", device = "src", target = "tgt", copyMode }, HttpStatusCode.Created);
                    else
                        await StartMirrorAsync(http, $"m{life}", copyMode, 0);
                    await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == $"m{life}");
                    await writers.StopAsync();
                    if (pivot)
                    {
                        // Killed with nothing after the pivot but writes: no later checkpoint may hide
                        // a pivot stored in pieces. The next life gives src a new tgt.
                        await PivotMirrorAsync(http, events, $"m{life}");
                        newTarget = $"tgt{life}.img";
                        pivots++;
                        note = () => " (after a pivot)";
                    }
                    else
                    {
                        targetHash = await FinishMirrorAsync(http, events, $"m{life}", acked);
                    }
                    writers = new CrashWriters(child, nbd, "src", Size, acked, seed * 1000 + life + 500);
                    KillAtAck(child, writers, random.Next(1, 200));
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    break;
                }

                case KillPoint.DuringATransaction:
                {
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    var actions = new List<object> { new { type = "bitmap-clear", node = "src", name = "p2" } };
                    foreach (var b in (await http.GetJsonAsync("/api/v1/nodes/src"))["bitmaps"]!.AsArray().Select(b => (string)b!).Where(b => b.StartsWith('t')))
                        actions.Add(new { type = "bitmap-remove", node = "src", name = b });
                    var added = $"t{life}";
                    actions.Add(new { type = "bitmap-add", node = "src", name = added, granularity = 65536, persistent = true });
                    // From the moment the clear may run, writes prove nothing about p2 until its answer,
                    // and which of the t* bitmaps exist is only known from the answer.
                    acked.Suspend("p2");
                    var before = existing.ToList();
                    existing.Clear();
                    var transaction = http.PostAsJsonAsync("/api/v1/transactions", new { actions });
                    var killAt = random.Next(0, 8);
                    if (killAt == 0)
                        child.Kill();
                    else
                        KillAtAck(child, writers, writers.Acks + killAt);
                    note = () => " (transaction unanswered)";
                    try
                    {
                        using var response = await transaction;
                        if (response.StatusCode == HttpStatusCode.OK)
                        {
                            // Answered: durable, whatever comes next.
                            note = () => " (transaction answered)";
                            acked.Resume("p2");
                            removed.UnionWith(before);
                            existing.Add(added);
                            removed.Remove(added);
                        }
                        else
                        {
                            Assert.True(child.Killed, $"transaction refused: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
                        }
                    }
                    catch (HttpRequestException) when (child.Killed)
                    {
                    }
                    break;
                }

                case KillPoint.AroundASecondInstanceStart:
                {
                    // Another instance on the same folder (another REST port, the same NBD socket path):
                    // before, its start migrated, checkpointed and restarted the journal under this one.
                    writers.Start(httpWriters: 2, nbdWriters: 2);
                    var dirtied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    var before = random.Next(5, 60);
                    writers.OnAck = count =>
                    {
                        if (count >= before)
                            dirtied.TrySetResult();
                    };
                    await dirtied.Task.WaitAsync(TimeSpan.FromSeconds(60));
                    ChildExit second;
                    if (random.Next(2) == 0)
                    {
                        // Refused while this one runs, then this one is killed.
                        second = await ChildService.RunToExitAsync(_dir, ActivityLog);
                        Assert.True(second.ExitCode == ExitCodes.InUse, second.ToString());
                        KillAtAck(child, writers, writers.Acks + random.Next(1, 100));
                        note = () => " (after a refused second instance)";
                    }
                    else
                    {
                        // Killed around the second's start (which takes about as long as a few hundred
                        // acknowledgements): it is refused, or it finds the folder free after the kill and
                        // starts (recovering what this one left), then dies with kill -9 as soon as it is
                        // healthy. Either way the next life checks every acknowledged write.
                        var starting = ChildService.RunToExitAsync(_dir, ActivityLog);
                        KillAtAck(child, writers, writers.Acks + random.Next(1, 600));
                        await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
                        second = await starting;
                        Assert.True(second.ExitCode is null or ExitCodes.InUse, second.ToString());
                        var startedAfterKill = second.ExitCode is null;
                        note = () => startedAfterKill ? " (a second instance started after the kill)" : " (a second instance refused, then the kill)";
                    }
                    if (second.ExitCode is null)
                        startedSeconds++;
                    else
                        refusedSeconds++;
                    break;
                }
            }

            // The kill comes from the writers' acknowledgements (states, not timers).
            await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
            await writers.StopAsync();
            Assert.Empty(writers.Errors);
            output.WriteLine($"life {life}: killed {point}{note()} after {writers.Acks} acks; start {started.TotalMilliseconds:F0} ms, checks + resume {(checkedAt - started).TotalMilliseconds:F0} ms, workload {(lifeClock.Elapsed - checkedAt).TotalMilliseconds:F0} ms");
        }

        var summary = $"crash harness (seed {seed}): {KillPoints} kill points ({string.Join(", ", kills.Select(k => $"{k.Key} {k.Value}"))}), " +
            $"{acked.Total} acknowledged writes, {checks} write×bitmap checks after restarts, lost = {lost}; " +
            $"{resumed} mirrors resumed from the surviving bitmap to target == source, {targetsChecked} completed targets intact, " +
            $"{pivots} kills after a pivot, {refusedSeconds} second instances refused and {startedSeconds} started after the kill; " +
            $"largest recovery superset {largestSuperset >> 10} KiB of a bitmap (bound {SupersetBound >> 10} KiB: {HotExtents} hot extents of {ExtentBytes >> 10} KiB); {clock.Elapsed.TotalSeconds:F0} s";
        output.WriteLine(summary);
        Console.WriteLine(summary);
        Assert.Equal(0, lost);
    }

    /// <summary>Per bitmap of src restored after the kill, the bytes its recovery marked only because their extent was hot (/metrics).</summary>
    private static async Task<Dictionary<string, long>> RecoverySupersetAsync(HttpClient http)
    {
        var text = await http.GetStringAsync("/metrics");
        var found = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            if (!line.StartsWith("blockmirror_journal_recovery_superset_bytes{", StringComparison.Ordinal) || !line.Contains("node=\"src\"", StringComparison.Ordinal))
                continue;
            var bitmap = line.Split("bitmap=\"")[1].Split('"')[0];
            found[bitmap] = long.Parse(line[(line.LastIndexOf('}') + 1)..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        return found;
    }

    private static void KillAtAck(ChildService child, CrashWriters writers, int ack) =>
        writers.OnAck = count =>
        {
            if (count >= ack)
                child.Kill();
        };

    private static Task StartMirrorAsync(HttpClient http, string id, string copyMode, long speed) =>
        http.PostJsonAsync("/api/v1/jobs/mirror",
            new { id, sync = "full", device = "src", target = "tgt", bitmap = "p1", bitmapMode = "always", copyMode, speed },
            HttpStatusCode.Created);

    /// <summary>
    /// With no writer running: waits for ready, soft-cancels (a point-in-time copy, no pivot), waits
    /// for the success, and proves tgt == src; returns that content's hash. p1 is empty after it.
    /// </summary>
    private static async Task<string> FinishMirrorAsync(HttpClient http, EventWaiter events, string id, AckedWrites acked)
    {
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == id);
        // The success empties p1; until its answer, a crash may or may not have made that durable.
        acked.Suspend("p1");
        await http.PostJsonAsync($"/api/v1/jobs/{id}/cancel", new { force = false });
        var done = await events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == id);
        Assert.Null(done.Data["error"]);
        acked.Resume("p1");
        var source = await HashAsync(http, "src");
        Assert.Equal(source, await HashAsync(http, "tgt"));
        return source;
    }

    /// <summary>
    /// With no writer running: waits for ready, completes (src now on tgt's file, tgt consumed),
    /// waits for the success, and checks that src reads as it did before the pivot. The job has no
    /// bitmap, so p1 and p2 just go on recording.
    /// </summary>
    private static async Task PivotMirrorAsync(HttpClient http, EventWaiter events, string id)
    {
        await events.WaitAsync("BLOCK_JOB_READY", d => (string?)d["id"] == id);
        var before = await HashAsync(http, "src");
        await http.PostJsonAsync($"/api/v1/jobs/{id}/complete", new { });
        var done = await events.WaitAsync("BLOCK_JOB_COMPLETED", d => (string?)d["id"] == id);
        Assert.Null(done.Data["error"]);
        Assert.Equal(before, await HashAsync(http, "src"));
        using var gone = await http.GetAsync("/api/v1/nodes/tgt");
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
    }

    private static async Task<string> HashAsync(HttpClient http, string node)
    {
        var data = await http.ReadAsync(node, 0, Size);
        return Convert.ToHexString(SHA256.HashData(data));
    }
}
