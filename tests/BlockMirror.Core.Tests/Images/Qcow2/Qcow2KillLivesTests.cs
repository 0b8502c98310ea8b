using System.Globalization;
using BlockMirror.Core.Images.Qcow2;
using Xunit.Abstractions;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// Many lives of one image, each ended by a simulated kill -9 at a seeded random write: the image in
/// memory keeps what had reached the file (the page cache outlives the process), the next life opens
/// it (repairing a dirty lazy-refcount image), runs concurrent batches of writes, zero writes and
/// discards on disjoint blocks with flushes between most batches, and is killed again. After each
/// kill the image is repaired, must check without corruption, and every block must read as the last
/// acknowledged operation on it left it or as one still in flight. The in-process twin of the
/// Interop kill test, fast enough for hundreds of lives: the lives are what matter, because a
/// repaired lazy image hands out clusters that still hold old bytes.
/// </summary>
public sealed class Qcow2KillLivesTests(ITestOutputHelper output)
{
    private const int BlockSize = 4096;

    public static TheoryData<int, int, bool, int> Configurations => new()
    {
        { 65536, 4, true, 1 },
        { 65536, 4, true, 2 },
        { 65536, 4, false, 3 },
        { 4096, 1, true, 4 },
        { 4096, 1, false, 5 },
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public async Task EveryLife_EndedByAKill_LeavesNoCorruption_AndEveryAcknowledgedWrite(int clusterSize, int sizeMiB, bool lazy, int seed)
    {
        // BLOCKMIRROR_QCOW2_KILL_LIVES runs more lives, to hunt a rare failure (docs/development.md).
        var lives = int.Parse(Environment.GetEnvironmentVariable("BLOCKMIRROR_QCOW2_KILL_LIVES") ?? "40", CultureInfo.InvariantCulture);
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = (long)sizeMiB << 20, ClusterSize = clusterSize, LazyRefcounts = lazy });
        var bytes = file.Snapshot();
        var blocks = (sizeMiB << 20) / BlockSize;
        var ledger = new KillLedger(blocks, BlockSize);
        var rng = new Random(seed);
        var killedInFlight = 0;
        var largest = 0L;
        for (var life = 0; life < lives; life++)
        {
            var lifeSeed = rng.Next();
            var (killed, ops, flushed) = await RunLifeAsync(bytes, lifeSeed, (life + 1) * 1_000_000L, clusterSize, writesUntilKill: rng.Next(0, 300));
            if (ops.Any(o => o.Id > flushed))
                killedInFlight++;

            // Repair (the next read-write open of a dirty lazy image rebuilds its refcounts), then check.
            var repaired = new MemoryQcow2File(killed, yieldOnAsync: false);
            await Qcow2TestImages.Open(repaired).DisposeAsync();
            bytes = repaired.Snapshot();
            largest = Math.Max(largest, bytes.LongLength);
            var check = Qcow2Check.Run(new MemoryQcow2File(bytes.ToArray(), yieldOnAsync: false));
            var where = $"seed {seed} life {life} (life seed {lifeSeed})";
            Assert.True(check.Corruptions == 0, $"{where}: {string.Join("\n", check.Messages.Take(8))}");

            var reader = Qcow2TestImages.Open(new MemoryQcow2File(bytes.ToArray(), yieldOnAsync: false), readOnly: true);
            var content = await Qcow2TestImages.ReadAllAsync(reader);
            await reader.DisposeAsync();
            var violation = ledger.Check(ops, flushed, content);
            Assert.True(violation is null, $"{where}: {violation?.Message}");
        }
        // The repair reuses free clusters: the file stays near the size the workload needs, however many lives.
        output.WriteLine($"{lives} lives: the file ends at {bytes.LongLength / clusterSize} clusters, {largest / clusterSize} at most");
        Assert.True(killedInFlight >= lives / 3, $"only {killedInFlight} of {lives} kills hit unacknowledged operations");
    }

    /// <summary>One life on a copy of <paramref name="bytes"/>: returns what the file held at the kill, the operations issued and the last acknowledged one.</summary>
    private static async Task<(byte[] Killed, List<KilledOperation> Ops, long Flushed)> RunLifeAsync(
        byte[] bytes, int seed, long nextId, int clusterSize, int writesUntilKill)
    {
        var file = new MemoryQcow2File(bytes.ToArray()) { WritesUntilKill = writesUntilKill };
        var ops = new List<KilledOperation>();
        var flushed = 0L;
        var rng = new Random(seed);
        Qcow2Image image;
        try
        {
            image = Qcow2TestImages.Open(file);
        }
        catch (IOException) when (file.KilledImage is not null)
        {
            return (file.KilledImage, ops, flushed);
        }
        var blocks = (int)(image.Size / BlockSize);
        var blocksPerCluster = Math.Max(1, clusterSize / BlockSize);
        try
        {
            var workload = new KillWorkload(rng, nextId, blocks, blocksPerCluster);
            while (file.KilledImage is null)
            {
                var batch = workload.NextBatch();
                ops.AddRange(batch.Select(b => b.Op));
                await Task.WhenAll(batch.Select(b => Task.Run(() => KillWorkload.RunAsync(image, b.Op, b.Unmap, BlockSize))));
                if (workload.FlushAfterBatch())
                {
                    await image.FlushAsync();
                    flushed = workload.LastId;
                }
            }
        }
        catch (Exception) when (file.KilledImage is not null)
        {
            // Killed: whatever the requests still did never reached the file.
        }
        return (file.KilledImage!, ops, flushed);
    }
}
