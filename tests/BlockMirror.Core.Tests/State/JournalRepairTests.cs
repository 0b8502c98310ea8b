using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// A bitmap journal that cannot be written (issue 10, item 9; made to fail here by an immutable
/// segment, as a full disk would): writes needing a new durable granule are refused before they
/// reach the image, and once the disk takes writes again a repair (checkpoints, then a fresh segment)
/// brings them back without a restart, and a crash after it loses nothing acknowledged.
/// </summary>
public sealed class JournalRepairTests : IAsyncLifetime
{
    private const long G = 65536;
    private readonly TempImageDirectory _dir = new();
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly InMemoryBlockStore _store = new();
    private readonly List<string> _immutable = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_immutable.Count > 0)
            Chattr.SetImmutable(false, [.. _immutable]);
        foreach (var o in Enumerable.Reverse(_owned))
            await o.DisposeAsync();
        _dir.Dispose();
    }

    private string Prefix => _dir.PathOf("journal");

    private string[] Segments() => Directory.GetFiles(Path.GetDirectoryName(Prefix)!, "journal.*.seg");

    private void FailSegments()
    {
        _immutable.AddRange(Segments());
        Chattr.SetImmutable(true, [.. _immutable]);
    }

    private void HealSegments()
    {
        Chattr.SetImmutable(false, [.. _immutable]);
        _immutable.Clear();
    }

    /// <param name="log">The activity log; by default one-granule extents, so that every first write to a granule needs the journal.</param>
    private async Task<BlockLayer> StartLayerAsync(InMemoryBlockStore store, BitmapActivityLogOptions? log = null)
    {
        var journal = new FileBitmapJournal(Prefix);
        var layer = new BlockLayer(new ImageRoot(_dir.PathOf("root")), store, NullEventSink.Instance, TimeProvider.System)
        {
            Journal = journal,
            ActivityLog = log ?? new BitmapActivityLogOptions { ExtentBytes = 512 },
        };
        _owned.Add(journal);
        _owned.Add(layer);
        await layer.LoadAsync();
        return layer;
    }

    [ChattrFact]
    public async Task A_failed_journal_refuses_appends_until_it_is_restarted_on_a_fresh_segment()
    {
        var journal = new FileBitmapJournal(Prefix);
        _owned.Add(journal);
        await journal.RecoverAsync();
        await journal.StartAsync(1);
        var failed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        journal.WriteFailed += () => failed.TrySetResult();
        await journal.AppendAsync("disk", "b", 0, 1);
        FailSegments();

        await Assert.ThrowsAsync<BitmapJournalException>(async () => await journal.AppendAsync("disk", "b", 1, 1));
        await failed.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.NotNull(journal.Failure);
        // Refused at once from now on, and a restart that cannot drop the old segment leaves it failed.
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await journal.AppendAsync("disk", "b", 2, 1));
        await Assert.ThrowsAsync<BitmapJournalException>(() => journal.RestartAsync(journal.LastSequence + 1));
        Assert.NotNull(journal.Failure);
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await journal.AppendAsync("disk", "b", 3, 1));

        HealSegments();
        var next = journal.LastSequence + 1;
        await journal.RestartAsync(next);
        Assert.Null(journal.Failure);
        await journal.AppendAsync("disk", "b", 5, 1);
        await journal.AppendAsync("disk", "b", 6, 1);

        // What a kill -9 now leaves: the fresh segment only, numbered on from the old one.
        Assert.Single(Segments());
        await using var reader = new FileBitmapJournal(Prefix);
        var recovery = await reader.RecoverAsync();
        Assert.Equal([new JournalEntry(next, "disk", "b", 5, 1), new JournalEntry(next + 1, "disk", "b", 6, 1)], recovery.Entries);
    }

    [ChattrFact]
    public async Task Writes_to_new_granules_are_refused_while_the_journal_fails_and_come_back_after_a_repair_with_nothing_lost()
    {
        var layer = await StartLayerAsync(_store);
        var disk = await layer.CreateNodeAsync(new NodeSpec("disk", "raw", "disk.img", null, 64 * G, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk", "p", G, persistent: true, disabled: false));
        await disk.WriteAsync(0, Pattern(4096, 1));
        FailSegments();

        var refused = await Assert.ThrowsAsync<BitmapJournalException>(async () => await disk.WriteAsync(5 * G, Pattern(4096, 2)));
        // Write-ahead: the refused write never reached the image.
        Assert.Equal(new byte[4096], await ReadAsync(disk, 5 * G, 4096));
        Assert.NotNull(layer.Journal!.Failure);
        // A granule already durable needs no journal: those writes go on.
        await disk.WriteAsync(0, Pattern(4096, 3));
        // While the disk still refuses, a repair fails and the journal stays failed.
        await Assert.ThrowsAnyAsync<IOException>(() => layer.RepairJournalAsync());
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await disk.WriteAsync(6 * G, Pattern(4096, 4)));

        HealSegments();
        await layer.RepairJournalAsync();
        Assert.Null(layer.Journal.Failure);
        await disk.WriteAsync(5 * G, Pattern(4096, 5));
        await disk.WriteAsync(7 * G, Pattern(4096, 6));

        // kill -9: the journal keeps what it made durable, nothing else is stored; a new layer restores p.
        await layer.Journal.DisposeAsync();
        await disk.Image.DisposeAsync();
        _owned.Remove(layer);
        var store = new InMemoryBlockStore();
        foreach (var n in await _store.LoadNodesAsync())
            await store.SaveNodeAsync(n);
        await store.SaveBitmapsAsync(await _store.LoadBitmapsAsync());
        var again = await StartLayerAsync(store);
        var p = again.GetNode("disk").GetBitmap("p");
        Assert.False(p.Inconsistent);
        Assert.Equal([(0L, G), (5 * G, G), (7 * G, G)], p.GetExtents(0, 64 * G));
        Assert.Equal(Pattern(4096, 5), await ReadAsync(again.GetNode("disk"), 5 * G, 4096));
    }

    [ChattrFact]
    public async Task With_coarse_extents_writes_into_hot_ones_go_on_while_the_journal_fails_and_cold_ones_come_back_after_a_repair()
    {
        const long Extent = 1 << 20;
        var layer = await StartLayerAsync(_store, new BitmapActivityLogOptions { ExtentBytes = Extent, HotExtents = 64 });
        var disk = await layer.CreateNodeAsync(new NodeSpec("disk", "raw", "disk.img", null, 4 * Extent, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk", "p", G, persistent: true, disabled: false));
        await disk.WriteAsync(0, Pattern(4096, 1));
        FailSegments();

        // Extent 0 is hot: no journal write, so the failing disk does not matter.
        await disk.WriteAsync(3 * G, Pattern(4096, 2));
        // Extent 2 is cold: its activation fails, the write never reaches the image, and a retry fails too.
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await disk.WriteAsync(2 * Extent, Pattern(4096, 3)));
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await disk.WriteAsync(2 * Extent, Pattern(4096, 3)));
        Assert.Equal(new byte[4096], await ReadAsync(disk, 2 * Extent, 4096));

        HealSegments();
        await layer.RepairJournalAsync();
        await disk.WriteAsync(2 * Extent + G, Pattern(4096, 4));

        // kill -9: the repair's checkpoint holds granules 0 and 3 exactly, the journal extent 2 (hot, whole).
        await layer.Journal!.DisposeAsync();
        await disk.Image.DisposeAsync();
        _owned.Remove(layer);
        var store = new InMemoryBlockStore();
        foreach (var n in await _store.LoadNodesAsync())
            await store.SaveNodeAsync(n);
        await store.SaveBitmapsAsync(await _store.LoadBitmapsAsync());
        var again = await StartLayerAsync(store, new BitmapActivityLogOptions { ExtentBytes = Extent, HotExtents = 64 });
        var p = again.GetNode("disk").GetBitmap("p");
        Assert.False(p.Inconsistent);
        Assert.Equal([(0L, G), (3 * G, G), (2 * Extent, Extent)], p.GetExtents(0, 4 * Extent));
        Assert.Equal(Pattern(4096, 4), await ReadAsync(again.GetNode("disk"), 2 * Extent + G, 4096));
    }

    private static byte[] Pattern(int length, byte seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static async Task<byte[]> ReadAsync(BlockNode node, long offset, int length)
    {
        var data = new byte[length];
        await node.ReadAsync(offset, data);
        return data;
    }
}
