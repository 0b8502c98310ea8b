using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// The block layer over a real journal and an in-memory store, "crashed" by abandoning it (images
/// closed, nothing stored) and reloaded by a second layer on the same store, journal and images.
/// </summary>
public sealed class JournalRecoveryTests : IAsyncLifetime
{
    private const long G = 65536;
    private readonly TempImageDirectory _dir = new();
    private InMemoryBlockStore _store = new();
    private InMemoryJobStore _jobs = new();
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly HashSet<BlockLayer> _crashed = [];
    private readonly ImageRoot _root;

    public JournalRecoveryTests()
    {
        _root = new ImageRoot(_dir.PathOf("root"));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    // IAsyncLifetime, not IAsyncDisposable: xunit 2 never calls a test class's DisposeAsync, and the
    // layers, journals and temp directory leaked with it.
    public async Task DisposeAsync()
    {
        // A crashed layer is never stopped: a dead process stores nothing.
        foreach (var o in Enumerable.Reverse(_owned).Where(o => o is not BlockLayer l || !_crashed.Contains(l)))
            await o.DisposeAsync();
        _dir.Dispose();
    }

    /// <summary>
    /// Extents of one granule (512 bytes is below every granularity): the activity log is then exact,
    /// one activation per written granule, which is what these tests compare bitmaps against. The
    /// coarse extents' superset and bound are ActivityLogTests'.
    /// </summary>
    private static readonly BitmapActivityLogOptions ExactLog = new() { ExtentBytes = 512 };

    private async Task<BlockLayer> StartLayerAsync(FileBitmapJournalOptions? options = null, IEventSink? events = null)
    {
        var journal = new FileBitmapJournal(_dir.PathOf("journal"), options);
        var layer = new BlockLayer(_root, _store, events ?? NullEventSink.Instance, TimeProvider.System) { Journal = journal, JobStore = _jobs, ActivityLog = ExactLog };
        _owned.Add(journal);
        _owned.Add(layer);
        await layer.LoadAsync();
        await layer.RecoverJobsAsync();
        return layer;
    }

    /// <summary>
    /// kill -9: the next layer gets a copy of the stores as they are now (whatever the dead layer's
    /// tasks still do goes to the old ones, as nothing of a dead process reaches the disk), the images'
    /// files and locks are released, and the journal keeps what it made durable.
    /// </summary>
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
        var jobs = new InMemoryJobStore();
        foreach (var j in await _jobs.LoadJobsAsync())
            jobs.Seed(j);
        (_store, _jobs) = (store, jobs);
    }

    private static async Task<BlockNode> SetUpAsync(BlockLayer layer)
    {
        var node = await layer.CreateNodeAsync(new NodeSpec("disk0", "raw", "disk0.img", null, 64 * G, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "p", G, persistent: true, disabled: false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "q", 4096, persistent: true, disabled: false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "off", G, persistent: true, disabled: true));
        return node;
    }

    [Fact]
    public async Task After_a_crash_persistent_bitmaps_hold_every_write_exactly()
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        await node.WriteAsync(0, new byte[1]);
        await node.WriteAsync(5 * G + 100, new byte[2 * G]);
        await node.WriteAsync(WriteRequest.ForZeroes(40 * G, G, mayUnmap: true));
        var expected = new[] { "p", "q", "off" }.ToDictionary(b => b, b => node.GetBitmap(b).Sha256Hex());
        await CrashAsync(first);

        var second = await StartLayerAsync();
        var restored = second.GetNode("disk0");
        Assert.Empty(second.InconsistentAtLoad);
        foreach (var (name, sha) in expected)
        {
            Assert.False(restored.GetBitmap(name).Inconsistent);
            Assert.Equal(sha, restored.GetBitmap(name).Sha256Hex());
        }
        Assert.Equal([(0L, G), (5 * G, 3 * G), (40 * G, G)], restored.GetBitmap("p").GetExtents(0, 64 * G));
        Assert.Equal(0, restored.GetBitmap("off").Count);
    }

    [Fact]
    public async Task A_clear_is_checkpointed_so_a_crash_does_not_bring_its_bits_back()
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        await node.WriteAsync(3 * G, new byte[G]);
        await first.BitmapActionAsync(new BitmapClearAction("disk0", "p"));
        await node.WriteAsync(9 * G, new byte[1]);
        await CrashAsync(first);

        var second = await StartLayerAsync();
        Assert.Equal([(9 * G, G)], second.GetNode("disk0").GetBitmap("p").GetExtents(0, 64 * G));
        // q was not cleared: both writes.
        Assert.Equal(G + 4096, second.GetNode("disk0").GetBitmap("q").Count);
    }

    [Fact]
    public async Task A_folded_journal_gives_the_same_bitmaps()
    {
        var first = await StartLayerAsync(new FileBitmapJournalOptions { SegmentEntries = 4 });
        var node = await SetUpAsync(first);
        for (var g = 0; g < 30; g += 2)
            await node.WriteAsync(g * G, new byte[1]);
        await first.FoldJournalAsync();
        Assert.Null(await first.Journal!.ReadSealedAsync());
        await node.WriteAsync(63 * G, new byte[1]);
        var sha = node.GetBitmap("p").Sha256Hex();
        await CrashAsync(first);

        var second = await StartLayerAsync();
        Assert.Equal(sha, second.GetNode("disk0").GetBitmap("p").Sha256Hex());
        Assert.Equal(16 * G, second.GetNode("disk0").GetBitmap("p").Count);
    }

    [Fact]
    public async Task Steady_state_writes_do_not_touch_the_journal()
    {
        var layer = await StartLayerAsync();
        var node = await SetUpAsync(layer);
        await node.WriteAsync(0, new byte[G]);
        var before = layer.Journal!.Statistics;
        for (var i = 0; i < 100; i++)
            await node.WriteAsync(i * 100, new byte[100]);
        Assert.Equal(before, layer.Journal.Statistics);
    }

    [Fact]
    public async Task A_mirror_working_from_a_persistent_bitmap_leaves_it_holding_every_write_after_a_crash()
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        await first.CreateNodeAsync(new NodeSpec("copy", "raw", "copy.img", null, 64 * G, false));
        await node.WriteAsync(2 * G, new byte[G]);
        // Slow enough never to finish: the crash finds it running, its copied bits cleared in memory only.
        var job = await first.StartMirrorAsync(new MirrorOptions { Id = "j", Device = "disk0", Target = "copy", Bitmap = "p", BitmapMode = BitmapMode.Always, Speed = 1 });
        await node.WriteAsync(20 * G, new byte[1]);
        await node.WriteAsync(21 * G, new byte[1]);
        Assert.True(job.Status is JobStatus.Running or JobStatus.Ready);
        await CrashAsync(first);

        var second = await StartLayerAsync();
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.False(p.Inconsistent);
        Assert.False(p.Disabled);
        Assert.Equal([(2 * G, G), (20 * G, 2 * G)], p.GetExtents(0, 64 * G));
        Assert.Equal("concluded", second.JobHistory.Concat(second.Jobs).Single(j => j.Id == "j").GetInfo().Status);
    }

    [Fact]
    public async Task A_completed_mirror_leaves_the_device_bitmaps_exact_and_consistent_after_a_crash()
    {
        var events = new RecordingEventSink();
        var first = await StartLayerAsync(events: events);
        var node = await SetUpAsync(first);
        await first.CreateNodeAsync(new NodeSpec("copy", "raw", "copy.img", null, 64 * G, false));
        await node.WriteAsync(2 * G, new byte[G]);
        var job = await first.StartMirrorAsync(new MirrorOptions { Id = "j", Device = "disk0", Target = "copy" });
        await events.WaitForAsync("BLOCK_JOB_READY", "j");
        await first.CompleteJobAsync("j");
        await job.Concluded.WaitAsync(RecordingEventSink.Timeout);
        Assert.Null(job.Error);
        // The device now writes to copy.img (another inode): the checkpoints must say so, or the
        // restart after a crash takes the bitmaps for stale and marks them inconsistent.
        Assert.Equal("copy.img", node.Path);
        await node.WriteAsync(30 * G, new byte[1]);
        var expected = new[] { "p", "q", "off" }.ToDictionary(b => b, b => node.GetBitmap(b).Sha256Hex());
        await CrashAsync(first);

        var second = await StartLayerAsync();
        var restored = second.GetNode("disk0");
        Assert.Equal("copy.img", restored.Path);
        Assert.Empty(second.InconsistentAtLoad);
        foreach (var (name, sha) in expected)
        {
            Assert.False(restored.GetBitmap(name).Inconsistent, name);
            Assert.Equal(sha, restored.GetBitmap(name).Sha256Hex());
        }
        Assert.Equal([(2 * G, G), (30 * G, G)], restored.GetBitmap("p").GetExtents(0, 64 * G));
        Assert.DoesNotContain(second.Nodes, n => n.Name == "copy");
    }

    [Theory]
    [InlineData("flipped byte")]
    [InlineData("cut at a record boundary")]
    [InlineData("cut in half")]
    [InlineData("segment deleted")]
    public async Task A_damaged_journal_makes_every_bitmap_it_cannot_prove_inconsistent_with_the_reason(string damage)
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        for (var g = 0; g < 10; g++)
            await node.WriteAsync(g * G, new byte[1]);
        // q's checkpoint covers every entry so far: no damage of the journal can touch it.
        await first.BitmapActionAsync(new BitmapClearAction("disk0", "q"));
        await CrashAsync(first);

        // 20 records of ("disk0", "p" | "q"): a 24-byte header, then 39 bytes each.
        var segment = Directory.GetFiles(_dir.PathOf(""), "journal.*.seg").Single();
        var bytes = await File.ReadAllBytesAsync(segment);
        Assert.Equal(24 + (20 * 39), bytes.Length);
        switch (damage)
        {
            case "flipped byte":
                bytes[24 + (3 * 39) + 20] ^= 0x10;
                await File.WriteAllBytesAsync(segment, bytes);
                break;
            case "cut at a record boundary":
                await File.WriteAllBytesAsync(segment, bytes[..(24 + (15 * 39))]);
                break;
            case "cut in half":
                await File.WriteAllBytesAsync(segment, bytes[..(bytes.Length / 2)]);
                break;
            default:
                File.Delete(segment);
                break;
        }

        var second = await StartLayerAsync();
        var restored = second.GetNode("disk0");
        foreach (var name in new[] { "p", "off" })
        {
            var b = restored.GetBitmap(name);
            Assert.True(b.Inconsistent, name);
            Assert.StartsWith("the bitmap journal is damaged: ", b.InconsistentReason, StringComparison.Ordinal);
        }
        Assert.Contains(second.LoadFailures, f => f.StartsWith("bitmap journal: ", StringComparison.Ordinal));
        var q = restored.GetBitmap("q");
        Assert.False(q.Inconsistent);
        Assert.Equal(0, q.Count);

        // The reason is stored with the bitmap: a clean restart still says why.
        var reason = restored.GetBitmap("p").InconsistentReason;
        await second.StopAsync();
        await second.Journal!.DisposeAsync();
        var third = await StartLayerAsync();
        Assert.Equal(reason, third.GetNode("disk0").GetBitmap("p").InconsistentReason);
        Assert.Empty(third.LoadFailures);
    }

    [Fact]
    public async Task A_torn_tail_after_a_crash_keeps_bitmaps_consistent_and_exact()
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        for (var g = 0; g < 10; g++)
            await node.WriteAsync(g * G, new byte[1]);
        var sha = node.GetBitmap("p").Sha256Hex();
        await CrashAsync(first);
        // The group commit being written when the process died: half a record, never acknowledged.
        var segment = Directory.GetFiles(_dir.PathOf(""), "journal.*.seg").Single();
        await using (var f = new FileStream(segment, FileMode.Append))
            await f.WriteAsync(new byte[20]);

        var second = await StartLayerAsync();
        Assert.Empty(second.InconsistentAtLoad);
        Assert.Equal(sha, second.GetNode("disk0").GetBitmap("p").Sha256Hex());
    }

    [Fact]
    public async Task An_image_renamed_over_while_open_is_never_stamped_as_the_bitmaps_file()
    {
        var first = await StartLayerAsync();
        var node = await SetUpAsync(first);
        await node.WriteAsync(7 * G, new byte[1]);
        // mv other.img disk0.img: same size, a new inode; the node keeps the old one open. No control
        // operation runs before the stop: the clean stop's own checkpoint must notice.
        var other = _dir.PathOf("root/other.img");
        await File.WriteAllBytesAsync(other, new byte[64 * G]);
        File.Move(other, _dir.PathOf("root/disk0.img"), overwrite: true);
        await first.StopAsync();
        Assert.True(node.ImageReplaced);
        await Assert.ThrowsAsync<BlockException>(async () => await node.WriteAsync(0, new byte[1]));
        await first.Journal!.DisposeAsync();

        var second = await StartLayerAsync();
        var p = second.GetNode("disk0").GetBitmap("p");
        Assert.True(p.Inconsistent);
        Assert.Contains("replaced by another file", p.InconsistentReason, StringComparison.Ordinal);
        Assert.False(second.GetNode("disk0").ImageReplaced);
    }
}
