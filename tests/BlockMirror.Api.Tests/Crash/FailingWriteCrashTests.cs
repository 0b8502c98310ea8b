using System.Net;
using System.Net.Http.Json;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// The crash harness's kill point during failing writes (issue 10.3): node <c>full</c> lives on a
/// 1 MiB tmpfs under the child's image root, so most writes to it fail with ENOSPC, some after
/// changing part of their range. Each life frees the file system, clears the persistent bitmap
/// <c>pf</c>, starts HTTP and NBD writers, and after a few failures runs the backup rotation of
/// API.md (add <c>c</c>, merge <c>pf</c> into it, clear <c>pf</c>: a checkpoint of both from
/// memory); the kill comes the instant a later failed write is answered. After the restart every
/// granule of every request answered before the rotation (failed or not) is dirty in <c>c</c>, and
/// of every one sent after its answer in <c>pf</c>. Before, a failed write was only in the journal
/// and not in memory, so the rotation's checkpoint of <c>c</c> dropped it for good.
/// </summary>
public sealed class FailingWriteCrashTests(ITestOutputHelper output) : IDisposable
{
    private const long Size = 8L << 20;
    private const int Lives = 6;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-crash-enospc-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [TmpfsFact]
    public async Task Kill_9_during_failing_writes_keeps_every_granule_they_touched()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_CRASH_SEED"), out var s) ? s : 20261202;
        var random = new Random(seed);
        await using var tmpfs = await TmpfsMount.MountAsync(Path.Combine(_dir, "images", "small"), "1m");
        IReadOnlyList<FailingWriters.Answered> last = [];
        string? copy = null;
        long checks = 0, failed = 0;

        var exported = false;

        for (var life = 0; life <= Lives; life++)
        {
            await using var child = await ChildService.StartAsync(_dir);
            var http = child.Http;
            if (life == 0)
            {
                await http.CreateNodeAsync("full", Size, "small/full.img");
                await http.AddBitmapAsync("full", "pf", 65536, persistent: true);
            }
            else
            {
                // Answered before the rotation was sent: in c (the rotation merged pf into it). Sent
                // after its answer: in pf. Failed or not, every granule of the range.
                var expect = new[]
                {
                    (Bitmap: copy!, Writes: last.Where(w => w.AnsweredIn == 0)),
                    (Bitmap: "pf", Writes: last.Where(w => w.SentIn == 2)),
                };
                foreach (var (bitmap, writes) in expect)
                {
                    var doc = await http.GetJsonAsync($"/api/v1/nodes/full/bitmaps/{bitmap}");
                    Assert.False((bool)doc["inconsistent"]!, $"life {life}: {bitmap} came back inconsistent\n{child.Log}");
                    var dirty = ApiClient.Extents(await http.GetJsonAsync($"/api/v1/nodes/full/bitmaps/{bitmap}/extents?offset=0&length={Size}"));
                    foreach (var w in writes)
                    {
                        checks++;
                        failed += w.Failed ? 1 : 0;
                        Assert.True(DirtyExtents.Covered(dirty, w.Offset, w.Length),
                            $"life {life}: {bitmap} lost the {(w.Failed ? "failed" : "acknowledged")} write {w.Offset}+{w.Length}");
                    }
                }
                if (life == Lives)
                    break;
            }

            // Free the file system, then start from clean bitmaps (the last life's copy goes).
            await http.PostJsonAsync("/api/v1/nodes/full/discard", new { offset = 0, length = Size }, HttpStatusCode.NoContent);
            var reset = new List<object> { new { type = "bitmap-clear", node = "full", name = "pf" } };
            if (copy is not null)
                reset.Add(new { type = "bitmap-remove", node = "full", name = copy });
            await http.PostJsonAsync("/api/v1/transactions", new { actions = reset });

            var export = await child.ExportAsync("full", "full", exported);
            exported = true;
            await using var nbd = await NbdClient.ConnectAsync(NbdUri.Parse((string)export["uri"]!));
            var writers = new FailingWriters(child, nbd, "full", Size, seed * 100 + life);
            var rotateAt = random.Next(2, 12);
            var rotationDue = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            writers.OnFailure = n =>
            {
                if (n >= rotateAt)
                    rotationDue.TrySetResult();
            };
            writers.Start(httpWriters: 2, nbdWriters: 1);
            await rotationDue.Task.WaitAsync(TimeSpan.FromSeconds(60));

            copy = $"c{life}";
            writers.Phase = 1;
            await http.PostJsonAsync("/api/v1/transactions", new
            {
                actions = new object[]
                {
                    new { type = "bitmap-add", node = "full", name = copy, granularity = 65536, persistent = true },
                    new { type = "bitmap-merge", node = "full", name = copy, sources = new[] { new { name = "pf" } } },
                    new { type = "bitmap-clear", node = "full", name = "pf" },
                },
            });
            writers.Phase = 2;
            var killAt = writers.Failures + random.Next(0, 8);
            if (killAt == writers.Failures)
                child.Kill();
            else
                writers.OnFailure = n =>
                {
                    if (n >= killAt)
                        child.Kill();
                };

            await child.WaitForKillAsync(TimeSpan.FromSeconds(60));
            await writers.StopAsync();
            Assert.Empty(writers.Errors);
            last = writers.All;
            output.WriteLine($"life {life}: {last.Count} answered ({last.Count(w => w.Failed)} failed), rotation after {rotateAt} failures, killed at failure {killAt}");
        }

        var summary = $"failing-write crash harness (seed {seed}): {Lives} kills during ENOSPC writes, {checks} write×bitmap checks after restarts ({failed} of failed writes), none lost";
        output.WriteLine(summary);
        Console.WriteLine(summary);
    }
}
