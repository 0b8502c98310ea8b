using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Transactions;

/// <summary>
/// The bitmap memory budget and the cap on actions per transaction (issue 10, item 16): what does not
/// fit is refused with a code before anything is allocated or changed, and memory given back (a
/// removed bitmap, a finished job's working bitmap) can be used again.
/// </summary>
public sealed class BitmapLimitsTests : IAsyncLifetime
{
    public Task InitializeAsync() => Task.CompletedTask;

    private const long Size = 16L << 20;
    private static readonly long Fine = DirtyBitmap.MemoryBytesFor(DirtyBitmap.GranulesFor(Size, 512));
    private static readonly long FineContent = DirtyBitmap.SerializedBytesFor(DirtyBitmap.GranulesFor(Size, 512));
    private readonly TempImageDirectory _dir = new();
    private readonly RecordingEventSink _events = new();
    private BlockLayer? _layer;

    public async Task DisposeAsync()
    {
        if (_layer is not null)
        {
            foreach (var job in _layer.Jobs)
                await job.Concluded.WaitAsync(RecordingEventSink.Timeout);
            await _layer.DisposeAsync();
            await (_layer.Journal?.DisposeAsync() ?? ValueTask.CompletedTask);
        }
        _dir.Dispose();
    }

    private async Task<BlockLayer> StartAsync(long budget, int maxActions = BlockLayer.DefaultMaxTransactionActions, bool journal = false)
    {
        Directory.CreateDirectory(_dir.PathOf("root"));
        _layer = new BlockLayer(new ImageRoot(_dir.PathOf("root")), new InMemoryBlockStore(), _events, TimeProvider.System)
        {
            BitmapMemoryBudget = budget,
            MaxTransactionActions = maxActions,
            Journal = journal ? new FileBitmapJournal(_dir.PathOf("journal")) : null,
        };
        await _layer.LoadAsync();
        await _layer.CreateNodeAsync(new NodeSpec("disk", "raw", "disk.img", null, Size, false));
        return _layer;
    }

    private static Task<DirtyBitmap> AddAsync(BlockLayer layer, string name, bool persistent = false) =>
        layer.BitmapActionAsync(new BitmapAddAction("disk", name, 512, persistent, disabled: false));

    [Fact]
    public async Task A_bitmap_beyond_the_budget_is_refused_and_a_removed_one_gives_its_share_back()
    {
        var layer = await StartAsync(budget: 2 * Fine + Fine / 2);
        await AddAsync(layer, "b1");
        await AddAsync(layer, "b2");
        Assert.Equal(2 * Fine, layer.BitmapMemoryInUse);

        var refused = await Assert.ThrowsAsync<BlockException>(() => AddAsync(layer, "b3"));

        Assert.Equal("bitmap-memory-exceeded", refused.Code);
        Assert.Equal(BlockErrorKind.Conflict, refused.Kind);
        Assert.Null(layer.GetNode("disk").FindBitmap("b3"));
        await layer.TransactionAsync([new BitmapRemoveAction("disk", "b1")]);
        await AddAsync(layer, "b3");
    }

    [Fact]
    public async Task A_persistent_bitmap_counts_its_durability_shadow_and_a_clear_its_backup()
    {
        // The persistent bitmap and its shadow, one plain bitmap, and room for less than a clear's backup and content.
        var layer = await StartAsync(budget: 3 * Fine + FineContent, journal: true);
        var p = await AddAsync(layer, "p", persistent: true);
        Assert.Equal(2 * Fine, layer.BitmapMemoryInUse);
        await AddAsync(layer, "b");
        await layer.GetNode("disk").WriteAsync(0, new byte[4096]);

        var refused = await Assert.ThrowsAsync<BlockException>(() => layer.BitmapActionAsync(new BitmapClearAction("disk", "p")));

        Assert.Equal("bitmap-memory-exceeded", refused.Code);
        Assert.Equal(4096, p.Count);
    }

    [Fact]
    public async Task Two_adds_and_two_merges_beyond_the_budget_change_nothing()
    {
        var layer = await StartAsync(budget: 3 * Fine + Fine / 2);
        await AddAsync(layer, "b0");
        await layer.GetNode("disk").WriteAsync(0, new byte[Size]);

        var failed = await Assert.ThrowsAsync<TransactionFailedException>(() => layer.TransactionAsync(
        [
            new BitmapAddAction("disk", "x", 512, persistent: false, disabled: false),
            new BitmapAddAction("disk", "y", 512, persistent: false, disabled: false),
            new BitmapMergeAction("disk", "x", [new BitmapSource(null, "b0")]),
            new BitmapMergeAction("disk", "y", [new BitmapSource(null, "b0")]),
        ]));

        Assert.Equal(2, failed.ActionIndex);
        Assert.Equal("bitmap-memory-exceeded", failed.Error.Code);
        Assert.Equal(["b0"], layer.GetNode("disk").Bitmaps.Select(b => b.Name));
        Assert.Equal(Fine, layer.BitmapMemoryInUse);
    }

    [Fact]
    public async Task A_mirror_working_bitmap_counts_while_the_job_runs_and_is_given_back_after()
    {
        var layer = await StartAsync(budget: Fine + Fine / 2);
        await layer.CreateNodeAsync(new NodeSpec("dst", "raw", "dst.img", null, Size, false));
        await AddAsync(layer, "b0");

        var refused = await Assert.ThrowsAsync<BlockException>(() => layer.StartMirrorAsync(new MirrorOptions { Device = "disk", Target = "dst", Granularity = 512 }));
        Assert.Equal("bitmap-memory-exceeded", refused.Code);
        Assert.Null(layer.GetNode("disk").JobId);
        Assert.Null(layer.GetNode("dst").JobId);

        await layer.TransactionAsync([new BitmapRemoveAction("disk", "b0")]);
        await layer.StartMirrorAsync(new MirrorOptions { Device = "disk", Target = "dst", Granularity = 512 });
        Assert.Equal(Fine, layer.BitmapMemoryInUse);
        await _events.WaitForAsync("BLOCK_JOB_READY", "disk");
        await layer.CancelJobAsync("disk", force: false);
        await _events.WaitForStatusAsync("disk", "null");
        Assert.True(layer.BitmapMemoryInUse < 64, $"{layer.BitmapMemoryInUse} bytes still held after the job");
        await AddAsync(layer, "b0");
    }

    [Fact]
    public async Task A_transaction_beyond_the_action_cap_is_refused_before_any_action_runs()
    {
        var layer = await StartAsync(budget: BlockLayer.DefaultBitmapMemoryBudget, maxActions: 2);

        var refused = await Assert.ThrowsAsync<BlockException>(() => layer.TransactionAsync(
        [
            new BitmapAddAction("disk", "a", null, persistent: false, disabled: false),
            new BitmapAddAction("disk", "b", null, persistent: false, disabled: false),
            new BitmapAddAction("disk", "c", null, persistent: false, disabled: false),
        ]));

        Assert.Equal("too-many-actions", refused.Code);
        Assert.Equal(BlockErrorKind.Invalid, refused.Kind);
        Assert.Empty(layer.GetNode("disk").Bitmaps);
    }

    [Fact]
    public async Task A_bitmap_that_cannot_exist_is_refused_naming_a_granularity_that_fits()
    {
        var layer = await StartAsync(budget: 1L << 30);
        var e = Assert.Throws<BlockException>(() => layer.CheckBitmapSize(1L << 60, DirtyBitmap.DefaultGranularity, persistent: false));
        Assert.Equal("bitmap-too-large", e.Code);
        Assert.Contains("at least 16777216", e.Message, StringComparison.Ordinal);
        Assert.Equal(HBitmap.MaxLength, (1L << 60) >> 24); // that granularity fits exactly
    }
}
