using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// The activity log of persistent bitmaps (issue 15 item 3): a working set within the hot bound costs
/// no journal write once warm, one beyond it evicts, and a crash restores a superset of what was
/// written bounded by hot extents × extent size. "Crashed" as in JournalRecoveryTests: the journal
/// closed with what it made durable, the images released, nothing else stored.
/// </summary>
public sealed class ActivityLogTests : IAsyncLifetime
{
    private const long G = 65536;
    private const long Extent = 1L << 20;
    private const long Size = 64L << 20;
    private const long ExtentGranules = Extent / G;
    private readonly TempImageDirectory _dir = new();
    private readonly ImageRoot _root;
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly HashSet<BlockLayer> _crashed = [];
    private InMemoryBlockStore _store = new();

    public ActivityLogTests()
    {
        _root = new ImageRoot(_dir.PathOf("root"));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var o in Enumerable.Reverse(_owned).Where(o => o is not BlockLayer l || !_crashed.Contains(l)))
            await o.DisposeAsync();
        _dir.Dispose();
    }

    private async Task<BlockLayer> StartLayerAsync(int hotExtents, int segmentEntries = 16384)
    {
        var journal = new FileBitmapJournal(_dir.PathOf("journal"), new FileBitmapJournalOptions { SegmentEntries = segmentEntries });
        var layer = new BlockLayer(_root, _store, NullEventSink.Instance, TimeProvider.System)
        {
            Journal = journal,
            ActivityLog = new BitmapActivityLogOptions { ExtentBytes = Extent, HotExtents = hotExtents },
        };
        _owned.Add(journal);
        _owned.Add(layer);
        await layer.LoadAsync();
        return layer;
    }

    private static async Task<BlockNode> SetUpAsync(BlockLayer layer)
    {
        var node = await layer.CreateNodeAsync(new NodeSpec("disk0", "raw", "disk0.img", null, Size, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "p", G, persistent: true, disabled: false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "q", 4096, persistent: true, disabled: false));
        return node;
    }

    private async Task CrashAsync(BlockLayer layer)
    {
        _crashed.Add(layer);
        await layer.Journal!.DisposeAsync();
        foreach (var node in layer.Nodes)
            await node.Image.DisposeAsync();
        var store = new InMemoryBlockStore();
        foreach (var n in await _store.LoadNodesAsync())
            await store.SaveNodeAsync(n);
        await store.SaveBitmapsAsync(await _store.LoadBitmapsAsync());
        _store = store;
    }

    private static async Task WriteRandomAsync(BlockNode node, Random random, long extents, int writes)
    {
        var data = new byte[4096];
        for (var i = 0; i < writes; i++)
            await node.WriteAsync(random.NextInt64(extents * Extent / 4096) * 4096, data);
    }

    [Fact]
    public async Task A_working_set_within_the_hot_bound_costs_no_sync_after_warm_up()
    {
        var layer = await StartLayerAsync(hotExtents: 16);
        var node = await SetUpAsync(layer);
        var random = new Random(15);
        // Warm-up: one write into each of the 16 extents of the working set: one activation each, per bitmap.
        for (var e = 0; e < 16; e++)
            await node.WriteAsync(e * Extent + 8192, new byte[4096]);
        var warm = layer.Journal!.Statistics;
        Assert.Equal(2 * 16, layer.ActivityLogStatistics.Activated);
        Assert.Equal(2 * 16, layer.ActivityLogStatistics.HotExtents);

        await WriteRandomAsync(node, random, extents: 16, writes: 2000);

        var after = layer.Journal.Statistics;
        Assert.Equal(0, after.Flushes - warm.Flushes);
        Assert.Equal(0, after.Appends - warm.Appends);
        Assert.Equal(0, layer.ActivityLogStatistics.Evicted);
        Assert.Equal(16, layer.HotExtentsOf(node.GetBitmap("p")));
    }

    [Fact]
    public async Task A_working_set_beyond_the_hot_bound_evicts_and_syncs_and_stays_within_it()
    {
        var layer = await StartLayerAsync(hotExtents: 16);
        var node = await SetUpAsync(layer);
        var before = layer.Journal!.Statistics;

        await WriteRandomAsync(node, new Random(16), extents: 48, writes: 600);

        var stats = layer.ActivityLogStatistics;
        Assert.True(stats.Evicted > 0, $"{stats}");
        Assert.True(layer.Journal.Statistics.Flushes - before.Flushes >= stats.Activated / 2, $"{layer.Journal.Statistics} for {stats}");
        Assert.Equal(16, layer.HotExtentsOf(node.GetBitmap("p")));
        Assert.Equal(16, layer.HotExtentsOf(node.GetBitmap("q")));
        Assert.Equal(32, stats.HotExtents);
    }

    [Theory]
    [InlineData(4, 11)]
    [InlineData(16, 12)]
    [InlineData(64, 13)]
    public async Task After_a_crash_a_bitmap_holds_every_written_granule_and_at_most_the_hot_extents_more(int hotExtents, int seed)
    {
        var first = await StartLayerAsync(hotExtents);
        var node = await SetUpAsync(first);
        await WriteRandomAsync(node, new Random(seed), extents: Size / Extent, writes: 400);
        var exact = new[] { "p", "q" }.ToDictionary(b => b, b => node.GetBitmap(b).GetExtents(0, Size));
        var exactGranules = new[] { "p", "q" }.ToDictionary(b => b, b => node.GetBitmap(b).DirtyGranules);
        await CrashAsync(first);

        var second = await StartLayerAsync(hotExtents);
        var restored = second.GetNode("disk0");
        Assert.Empty(second.InconsistentAtLoad);
        foreach (var name in new[] { "p", "q" })
        {
            var bitmap = restored.GetBitmap(name);
            foreach (var (offset, length) in exact[name])
                Assert.Equal([(offset, length)], bitmap.GetExtents(offset, length));
            var added = bitmap.DirtyGranules - exactGranules[name];
            var bound = hotExtents * (Extent / bitmap.Granularity);
            Assert.InRange(added, 0, bound);
            // The figure /metrics reports: the granules marked only because their extent was hot. The
            // journal does not know which of them were written, so it bounds the superset from above.
            var reported = second.RecoverySuperset.Single(r => r.Bitmap == name);
            Assert.InRange(reported.Granules, added, bound);
            Assert.Equal(reported.Granules * bitmap.Granularity, reported.Bytes);
        }
    }

    [Fact]
    public async Task An_evicted_extent_comes_back_exactly_and_a_hot_one_whole()
    {
        var first = await StartLayerAsync(hotExtents: 1);
        var node = await SetUpAsync(first);
        await node.WriteAsync(3 * G, new byte[1]);
        // Into extent 1: extent 0 is retired, its one granule written as a mark.
        await node.WriteAsync(Extent + 5 * G, new byte[1]);
        // Both bitmaps retired their extent 0.
        Assert.Equal(2, first.ActivityLogStatistics.Evicted);
        await CrashAsync(first);

        var second = await StartLayerAsync(hotExtents: 1);
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.Equal([(3 * G, G), (Extent, Extent)], p.GetExtents(0, Size));
        // Extent 1 whole (its written granule included: the journal knows the extent, not the granule).
        Assert.Equal(ExtentGranules, second.RecoverySuperset.Single(r => r.Bitmap == "p").Granules);
    }

    [Fact]
    public async Task A_fold_relogs_the_hot_extents_so_writes_into_them_after_it_survive_a_crash()
    {
        // Tiny segments: the activations are sealed, folded and deleted while their extents stay hot.
        var first = await StartLayerAsync(hotExtents: 64, segmentEntries: 4);
        var node = await SetUpAsync(first);
        for (var e = 0; e < 6; e++)
            await node.WriteAsync(e * Extent, new byte[1]);
        await first.FoldJournalAsync();
        Assert.Null(await first.Journal!.ReadSealedAsync());
        var before = first.Journal.Statistics;
        // Hot: acknowledged without a journal write.
        await node.WriteAsync(2 * Extent + 7 * G, new byte[1]);
        await node.WriteAsync(5 * Extent + 9 * G, new byte[1]);
        Assert.Equal(before.Appends, first.Journal.Statistics.Appends);
        await CrashAsync(first);

        var second = await StartLayerAsync(hotExtents: 64);
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.True(p.IsDirty(2 * Extent + 7 * G));
        Assert.True(p.IsDirty(5 * Extent + 9 * G));
    }

    [Fact]
    public async Task A_checkpoint_makes_every_extent_cold_so_writes_after_it_are_journaled_again()
    {
        var first = await StartLayerAsync(hotExtents: 64);
        var node = await SetUpAsync(first);
        await node.WriteAsync(2 * Extent, new byte[1]);
        Assert.Equal(1, first.HotExtentsOf(node.GetBitmap("p")));
        // A clear is checkpointed: the activation it covers is no longer replayed.
        await first.BitmapActionAsync(new BitmapClearAction("disk0", "p"));
        Assert.Equal(0, first.HotExtentsOf(node.GetBitmap("p")));
        var before = first.Journal!.Statistics;
        await node.WriteAsync(2 * Extent + 3 * G, new byte[1]);
        Assert.True(first.Journal.Statistics.Flushes > before.Flushes);
        await CrashAsync(first);

        var second = await StartLayerAsync(hotExtents: 64);
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.True(p.IsDirty(2 * Extent + 3 * G));
        // Only that extent: the clear holds for the rest.
        Assert.Equal([(2 * Extent, Extent)], p.GetExtents(0, Size));
    }

    [Fact]
    public async Task A_journal_of_the_format_before_the_activity_log_is_replayed_exactly()
    {
        var first = await StartLayerAsync(hotExtents: 64);
        await SetUpAsync(first);
        // What every earlier version wrote: granule ranges (kind 1), byte for byte the same records.
        await first.Journal!.AppendAsync("disk0", "p", 3, 2);
        await first.Journal.AppendAsync("disk0", "p", 40, 1);
        await CrashAsync(first);

        var second = await StartLayerAsync(hotExtents: 64);
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.False(p.Inconsistent);
        Assert.Equal([(3 * G, 2 * G), (40 * G, G)], p.GetExtents(0, Size));
        Assert.Equal(0, second.RecoverySuperset.Single(r => r.Bitmap == "p").Granules);
    }

    [Fact]
    public void Bad_options_are_refused()
    {
        Assert.NotNull(new BitmapActivityLogOptions { ExtentBytes = 3 << 20 }.Problem());
        Assert.NotNull(new BitmapActivityLogOptions { ExtentBytes = 256 }.Problem());
        Assert.NotNull(new BitmapActivityLogOptions { HotExtents = 0 }.Problem());
        Assert.Null(new BitmapActivityLogOptions().Problem());
    }
}
