using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// A qcow2 node's persistent bitmap in its image, through the block layer: a clean stop stores its
/// bits there and clears in-use, the next load proves the record from the image (the file's mtime
/// moved, by the load's own in-use marking, yet the bitmap is exact), and bits changed in the image
/// while the layer was down make it inconsistent, saying why.
/// </summary>
public sealed class Qcow2ImageBitmapsTests : IDisposable
{
    private const long G = 65536;
    private readonly TempImageDirectory _dir = new();
    private readonly InMemoryBlockStore _store = new();

    public void Dispose() => _dir.Dispose();

    private BlockLayer NewLayer() => new(new ImageRoot(_dir.PathOf("root")), _store, new RecordingEventSink(), TimeProvider.System, new TestImageOpener())
    {
        JobStore = new InMemoryJobStore(),
        StopWait = TimeSpan.FromSeconds(5),
    };

    private string Image => _dir.PathOf("root/q.qcow2");

    [Fact]
    public async Task A_clean_stop_stores_the_bitmap_in_the_image_and_a_changed_image_copy_is_reported_at_the_next_load()
    {
        Directory.CreateDirectory(_dir.PathOf("root"));
        var first = NewLayer();
        await first.CreateNodeAsync(new NodeSpec("q", "qcow2", "q.qcow2", null, 64 * G, false));
        await first.BitmapActionAsync(new BitmapAddAction("q", "p", G, persistent: true, disabled: false));
        await first.GetNode("q").WriteAsync(3 * G, new byte[512]);
        await first.StopAsync();
        Assert.False(_store.FindBitmap("q", "p")!.InUse);

        byte[] stored;
        await using (var image = Qcow2Image.Open(Image, readOnly: true))
        {
            Assert.Equal([new Qcow2StoredBitmap("p", G, InUse: false, Auto: true)], image.BitmapsAtOpen);
            stored = image.ReadStoredBitmap("p");
        }
        var bits = new DirtyBitmap("p", 64 * G, G);
        bits.Deserialize(stored);
        Assert.Equal([(3 * G, G)], bits.GetExtents(0, 64 * G));

        var second = NewLayer();
        await second.LoadAsync();
        var p = second.GetNode("q").GetBitmap("p");
        Assert.False(p.Inconsistent, p.InconsistentReason);
        Assert.True(p.IsDirty(3 * G));
        Assert.Equal(G, p.Count);
        await second.StopAsync();

        // While the layer is down, another writer stores other bits for p (as qemu-img bitmap --clear would).
        await using (var image = Qcow2Image.Open(Image, readOnly: false))
            await image.StoreBitmapsAsync([new Qcow2BitmapToStore("p", G, Auto: true, InUse: false, new byte[stored.Length])]);

        var third = NewLayer();
        await third.LoadAsync();
        p = third.GetNode("q").GetBitmap("p");
        Assert.True(p.Inconsistent);
        Assert.Contains("differ from the service's record", p.InconsistentReason, StringComparison.Ordinal);
        Assert.Contains(third.InconsistentAtLoad, r => r.StartsWith("q/p:", StringComparison.Ordinal));
        await third.StopAsync();
        await using (var image = Qcow2Image.Open(Image, readOnly: true))
            Assert.True(image.BitmapsAtOpen.Single().InUse, "an inconsistent bitmap stays in use in the image");
    }
}
