using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Transactions;

/// <summary>
/// A refused request changes nothing, in memory or in the store (issue 10, item 8): whatever fails
/// (a refusal, an exception of an action that is not one, the store after every action prepared)
/// aborts the whole transaction, and node create/delete undo themselves when the store refuses.
/// </summary>
public sealed class RefusedRequestTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private const long G = 65536;
    private readonly MirrorFixture _f = new();
    private BlockNode _disk = null!;

    public async Task InitializeAsync()
    {
        _disk = await _f.CreateRawAsync("disk", Size);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("disk", "keep", G, persistent: true, disabled: false));
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("disk", "b", G, persistent: false, disabled: false));
        await _disk.WriteAsync(3 * G, new byte[G]);
    }

    public async Task DisposeAsync()
    {
        _f.Store.FailWrites = null;
        await _f.DisposeAsync();
    }

    private static IOException DiskFull() => new("database or disk is full");

    [Fact]
    public async Task A_store_failure_after_every_action_prepared_aborts_the_whole_transaction()
    {
        var keep = _disk.GetBitmap("keep");
        var keepSha = keep.Sha256Hex();
        var storedKeep = _f.Store.FindBitmap("disk", "keep");
        _f.Store.FailWrites = DiskFull();

        await Assert.ThrowsAsync<IOException>(() => _f.Layer.TransactionAsync(
        [
            new BitmapRemoveAction("disk", "keep"),
            new BitmapAddAction("disk", "p2", G, persistent: true, disabled: false),
            new BitmapClearAction("disk", "b"),
        ]));

        // In memory: keep is there, usable, unchanged; p2 never appeared; b kept its bits.
        Assert.Same(keep, _disk.FindBitmap("keep"));
        Assert.False(keep.Busy);
        Assert.Equal(keepSha, keep.Sha256Hex());
        Assert.Null(_disk.FindBitmap("p2"));
        Assert.Equal(G, _disk.GetBitmap("b").Count);
        // In the store: nothing changed either.
        Assert.Same(storedKeep, _f.Store.FindBitmap("disk", "keep"));
        Assert.Null(_f.Store.FindBitmap("disk", "p2"));

        // And the refused transaction left nothing behind that blocks the next one.
        _f.Store.FailWrites = null;
        await _f.Layer.TransactionAsync([new BitmapRemoveAction("disk", "keep")]);
        Assert.Null(_disk.FindBitmap("keep"));
        Assert.Null(_f.Store.FindBitmap("disk", "keep"));
    }

    [Fact]
    public async Task A_clear_the_store_refuses_keeps_the_bits()
    {
        var keep = _disk.GetBitmap("keep");
        var stored = _f.Store.FindBitmap("disk", "keep");
        _f.Store.FailWrites = DiskFull();

        await Assert.ThrowsAsync<IOException>(() => _f.Layer.BitmapActionAsync(new BitmapClearAction("disk", "keep")));

        Assert.Equal(G, keep.Count);
        Assert.Same(stored, _f.Store.FindBitmap("disk", "keep"));
    }

    [Fact]
    public async Task An_add_the_store_refuses_is_not_listed()
    {
        _f.Store.FailWrites = DiskFull();

        await Assert.ThrowsAsync<IOException>(() => _f.Layer.BitmapActionAsync(new BitmapAddAction("disk", "new", G, persistent: true, disabled: false)));

        Assert.Null(_disk.FindBitmap("new"));
        Assert.Equal(["keep", "b"], _disk.Bitmaps.Select(b => b.Name));
    }

    [Fact]
    public async Task An_exception_that_is_not_a_refusal_aborts_the_prepared_actions()
    {
        var b = _disk.GetBitmap("b");

        var thrown = await Assert.ThrowsAsync<InvalidOperationException>(() => _f.Layer.TransactionAsync(
        [
            new BitmapEnableAction("disk", "b", enable: false),
            new BitmapRemoveAction("disk", "b"),
            new ThrowingAction(new InvalidOperationException("not a refusal")),
        ]));

        Assert.Equal("not a refusal", thrown.Message);
        Assert.Same(b, _disk.FindBitmap("b"));
        Assert.False(b.Disabled);
        Assert.False(b.Busy);
    }

    [Fact]
    public async Task Disable_remove_and_a_bitmap_too_large_for_a_1_EiB_node_change_nothing()
    {
        _f.Opener.Register("fault://huge", new SizeOnlyImage(1L << 60));
        await _f.Layer.CreateNodeAsync(new NodeSpec("huge", "nbd", null, "fault://huge", null, false));
        var b = _disk.GetBitmap("b");

        var failed = await Assert.ThrowsAsync<TransactionFailedException>(() => _f.Layer.TransactionAsync(
        [
            new BitmapEnableAction("disk", "b", enable: false),
            new BitmapRemoveAction("disk", "b"),
            new BitmapAddAction("huge", "default", granularity: null, persistent: false, disabled: false),
        ]));

        Assert.Equal(2, failed.ActionIndex);
        Assert.Equal("bitmap-too-large", failed.Error.Code);
        Assert.Equal(BlockErrorKind.Invalid, failed.Error.Kind);
        Assert.False(b.Disabled);
        Assert.False(b.Busy);
        Assert.Empty(_f.Layer.GetNode("huge").Bitmaps);
    }

    [Fact]
    public async Task A_persistent_bitmap_too_large_to_store_is_refused_before_it_exists()
    {
        // 8 TiB at 512 bytes: 2^34 bits, a 2 GiB checkpoint, beyond what one stored row holds.
        _f.Opener.Register("fault://big", new SizeOnlyImage(8L << 40));
        var big = await _f.Layer.CreateNodeAsync(new NodeSpec("big", "nbd", null, "fault://big", null, false));

        var refused = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.BitmapActionAsync(new BitmapAddAction("big", "p", 512, persistent: true, disabled: false)));

        Assert.Equal("bitmap-too-large", refused.Code);
        Assert.Contains("at least 2048", refused.Message);
        Assert.Empty(big.Bitmaps);
        Assert.Null(_f.Store.FindBitmap("big", "p"));
    }

    [Fact]
    public async Task A_node_create_the_store_refuses_leaves_no_image_behind()
    {
        _f.Store.FailWrites = DiskFull();

        await Assert.ThrowsAsync<IOException>(() => _f.CreateRawAsync("fresh", Size));

        Assert.Null(_f.Layer.FindNode("fresh"));
        Assert.False(File.Exists(_f.FullPath("fresh.img")));
        // The retry is not told the image exists.
        _f.Store.FailWrites = null;
        await _f.CreateRawAsync("fresh", Size);
        Assert.NotNull(_f.Store.NodesSnapshot().GetValueOrDefault("fresh"));
    }

    [Fact]
    public async Task A_node_delete_the_store_refuses_keeps_the_node()
    {
        _f.Store.FailWrites = DiskFull();

        await Assert.ThrowsAsync<IOException>(() => _f.Layer.DeleteNodeAsync("disk", deleteImage: true));

        Assert.Same(_disk, _f.Layer.FindNode("disk"));
        Assert.True(File.Exists(_f.FullPath("disk.img")));
        await _disk.WriteAsync(0, new byte[512]);
        Assert.True(_disk.GetBitmap("keep").IsDirty(0));
    }
}
