using System.Diagnostics;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;
using Xunit.Abstractions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// What the journal costs on the data path: a 4 KiB write to a fresh granule with a persistent
/// bitmap vs a non-persistent one, one at a time and many at once (group commit). Small by default;
/// BLOCKMIRROR_JOURNAL_BENCH=1 runs the 10,000-write measurement quoted in bench/README.md.
/// </summary>
public sealed class JournalCostTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Granularity = 65536;
    private static readonly bool Full = Environment.GetEnvironmentVariable("BLOCKMIRROR_JOURNAL_BENCH") == "1";
    private readonly TempImageDirectory _dir = new();
    private readonly List<IAsyncDisposable> _owned = [];

    public Task InitializeAsync() => Task.CompletedTask;

    // IAsyncLifetime, not IAsyncDisposable: xunit 2 never calls a test class's DisposeAsync, and the
    // layers, journals and temp directory leaked with it.
    public async Task DisposeAsync()
    {
        foreach (var o in Enumerable.Reverse(_owned))
            await o.DisposeAsync();
        _dir.Dispose();
    }

    /// <summary>
    /// Extents of one granule and room for all of them: every first write to a granule is one
    /// activation, the journal's cost per new granule measured here (ActivityLogTests measure extents).
    /// </summary>
    private static readonly BitmapActivityLogOptions PerGranule = new() { ExtentBytes = 512, HotExtents = 1 << 20 };

    private async Task<(BlockNode Node, IBitmapJournal Journal)> NodeAsync(string name, bool persistent, int granules)
    {
        var journal = new FileBitmapJournal(_dir.PathOf(name + ".journal"));
        var layer = new BlockLayer(new ImageRoot(_dir.PathOf(name)), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System) { Journal = journal, ActivityLog = PerGranule };
        _owned.Add(journal);
        _owned.Add(layer);
        await layer.LoadAsync();
        var node = await layer.CreateNodeAsync(new NodeSpec(name, "raw", name + ".img", null, (long)granules * Granularity, false));
        await layer.BitmapActionAsync(new BitmapAddAction(name, "b0", Granularity, persistent, disabled: false));
        return (node, journal);
    }

    [Fact]
    public async Task First_writes_to_granules_pay_one_group_commit()
    {
        var sequential = Full ? 10_000 : 100;
        var concurrent = Full ? 10_000 : 1000;
        const int writers = 64;
        var data = new byte[4096];
        Random.Shared.NextBytes(data);
        var lines = new List<string>();
        foreach (var persistent in new[] { false, true })
        {
            var (node, journal) = await NodeAsync(persistent ? "persistent" : "plain", persistent, sequential + concurrent);
            // Warm the path (JIT, file extents) on one granule outside the measured ones.
            await node.WriteAsync((long)(sequential + concurrent - 1) * Granularity, data);

            var clock = Stopwatch.StartNew();
            for (var i = 0; i < sequential; i++)
                await node.WriteAsync((long)i * Granularity, data);
            var oneByOne = clock.Elapsed;
            var before = journal.Statistics;

            var next = sequential - 1;
            clock.Restart();
            await Task.WhenAll(Enumerable.Range(0, writers).Select(_ => Task.Run(async () =>
            {
                int g;
                while ((g = Interlocked.Increment(ref next)) < sequential + concurrent - 1)
                    await node.WriteAsync((long)g * Granularity, data);
            })));
            var together = clock.Elapsed;
            var stats = journal.Statistics;
            var flushes = stats.Flushes - before.Flushes;
            var appends = stats.Appends - before.Appends;
            lines.Add($"{(persistent ? "persistent" : "non-persistent"),-15} sequential: {oneByOne.TotalMicroseconds / sequential,8:F0} µs/write ({sequential} writes); " +
                $"{writers} writers: {together.TotalMicroseconds / (concurrent - 1),8:F0} µs/write, {(concurrent - 1) / together.TotalSeconds,8:F0} writes/s, " +
                $"{flushes} fdatasyncs for {appends} journaled writes = {1000.0 * flushes / Math.Max(1, appends):F1} per 1000");
            if (persistent)
            {
                Assert.Equal(concurrent - 1, appends);
                Assert.True(flushes * 5 <= appends, $"{flushes} flushes for {appends} concurrent first writes");
            }
            else
            {
                Assert.Equal(0, stats.Appends);
            }
        }
        foreach (var line in lines)
        {
            output.WriteLine(line);
            Console.WriteLine(line);
        }
    }
}
