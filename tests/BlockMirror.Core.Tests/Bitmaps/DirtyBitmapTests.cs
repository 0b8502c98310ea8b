using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

/// <summary>Byte-range semantics of <see cref="DirtyBitmap"/>: rounding, clipping, checks, merge.</summary>
public class DirtyBitmapTests
{
    private const int G = 4096;

    [Theory]
    [InlineData(512L, true)]
    [InlineData(65536L, true)]
    [InlineData(1L << 31, true)]
    [InlineData(0L, false)]
    [InlineData(256L, false)]
    [InlineData(511L, false)]
    [InlineData(4095L, false)]
    [InlineData(3L << 10, false)]
    [InlineData(1L << 32, false)]
    [InlineData(-512L, false)]
    public void IsValidGranularity(long g, bool valid) => Assert.Equal(valid, DirtyBitmap.IsValidGranularity(g));

    [Fact]
    public void Constructor_validates_and_defaults()
    {
        Assert.Throws<ArgumentException>(() => new DirtyBitmap("b", 1000, 1000));
        Assert.Throws<ArgumentException>(() => new DirtyBitmap("b", 1000, 256));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DirtyBitmap("b", -1, G));
        var b = new DirtyBitmap("b0", 10 * G, G, persistent: true, disabled: true);
        Assert.Equal("b0", b.Name);
        Assert.Equal(10 * G, b.Size);
        Assert.Equal(G, b.Granularity);
        Assert.True(b.Persistent);
        Assert.True(b.Disabled);
        Assert.False(b.Recording);
        Assert.False(b.Busy || b.ReadOnly || b.Inconsistent);
        b.Disabled = false;
        Assert.True(b.Recording);
        Assert.Equal(65536, DirtyBitmap.DefaultGranularity);
    }

    [Fact]
    public void MarkDirty_rounds_outward_and_counts_new_granules()
    {
        var b = new DirtyBitmap("b", 100 * G, G);
        Assert.Equal(0, b.MarkDirty(5, 0));
        Assert.Equal(1, b.MarkDirty(5, 1));
        Assert.Equal(G, b.Count);
        Assert.Equal(0, b.MarkDirty(0, G));
        Assert.Equal(1, b.MarkDirty(G - 1, 2));
        Assert.Equal(2 * G, b.Count);
        Assert.Equal(2, b.DirtyGranules);
        Assert.True(b.IsDirty(0));
        Assert.True(b.IsDirty(2 * G - 1));
        Assert.False(b.IsDirty(2 * G));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.MarkDirty(100 * G, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.MarkDirty(-1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.IsDirty(100 * G));
    }

    [Fact]
    public void Count_clips_the_partial_last_granule()
    {
        long size = 10 * G + 100;
        var b = new DirtyBitmap("b", size, G);
        b.MarkDirty(size - 1, 1);
        Assert.Equal(100, b.Count);
        Assert.Equal(1, b.DirtyGranules);
        b.MarkAll();
        Assert.Equal(size, b.Count);
        Assert.Equal(11, b.DirtyGranules);
        b.Clear();
        Assert.Equal(0, b.Count);
    }

    [Fact]
    public void ClearDirty_clears_only_fully_covered_granules()
    {
        long size = 10 * G + 100;
        var b = new DirtyBitmap("b", size, G);
        b.MarkAll();

        b.ClearDirty(1, G);             // covers no whole granule
        Assert.Equal(size, b.Count);
        b.ClearDirty(G - 1, 2 * G + 1); // covers granule 1 and 2 only
        Assert.True(b.IsDirty(0));
        Assert.False(b.IsDirty(G));
        Assert.False(b.IsDirty(3 * G - 1));
        Assert.True(b.IsDirty(3 * G));
        Assert.Equal(size - 2 * G, b.Count);

        // The partial last granule counts as covered when the range reaches the end.
        b.ClearDirty(10 * G, 100);
        Assert.False(b.IsDirty(size - 1));
        Assert.Equal(size - 2 * G - 100, b.Count);

        // Not reaching the end leaves it.
        b.MarkDirty(size - 1, 1);
        b.ClearDirty(10 * G, 99);
        Assert.True(b.IsDirty(size - 1));

        b.ClearDirty(0, size);
        Assert.Equal(0, b.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => b.ClearDirty(0, size + 1));
    }

    [Fact]
    public void NextDirtyRun_limits_and_alignment()
    {
        long size = 20 * G + 10;
        var b = new DirtyBitmap("b", size, G);
        Assert.False(b.NextDirtyRun(0, G, out _, out _));
        b.MarkDirty(2 * G, 5 * G);
        b.MarkDirty(size - 1, 1);

        Assert.True(b.NextDirtyRun(0, long.MaxValue, out long o, out long l));
        Assert.Equal((2L * G, 5L * G), (o, l));
        Assert.True(b.NextDirtyRun(3 * G + 7, long.MaxValue, out o, out l));
        Assert.Equal((3L * G, 4L * G), (o, l));
        Assert.True(b.NextDirtyRun(0, 2 * G + 5, out o, out l));
        Assert.Equal((2L * G, 2L * G), (o, l));
        Assert.True(b.NextDirtyRun(0, 1, out o, out l));
        Assert.Equal((2L * G, (long)G), (o, l));
        Assert.True(b.NextDirtyRun(7 * G, G, out o, out l));
        Assert.Equal((20L * G, 10L), (o, l));
        Assert.False(b.NextDirtyRun(size, G, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.NextDirtyRun(0, 0, out _, out _));
    }

    [Fact]
    public void GetExtents_coalesces_and_clips()
    {
        long size = 20 * G + 10;
        var b = new DirtyBitmap("b", size, G);
        b.MarkDirty(G, G);
        b.MarkDirty(2 * G, G);
        b.MarkDirty(5 * G, 1);
        b.MarkDirty(size - 1, 1);

        Assert.Equal([(G, 2L * G), (5L * G, G), (20L * G, 10L)], b.GetExtents(0, size));
        Assert.Equal([(G + 10, 2L * G - 10), (5L * G, 10L)], b.GetExtents(G + 10, 4 * G));
        Assert.Empty(b.GetExtents(3 * G, 2 * G));
        Assert.Empty(b.GetExtents(G, 0));
        Assert.Equal([(size - 3, 3L)], b.GetExtents(size - 3, 3));
    }

    [Fact]
    public void TryGetFirstExtent_reports_dirty_and_clean_prefixes()
    {
        long size = 20 * G + 10;
        var b = new DirtyBitmap("b", size, G);
        b.MarkDirty(2 * G, 3 * G);

        Assert.True(b.TryGetFirstExtent(100, size - 100, out long o, out long l, out bool dirty));
        Assert.Equal((100L, 2L * G - 100, false), (o, l, dirty));
        Assert.True(b.TryGetFirstExtent(2 * G + 1, size - 2 * G - 1, out o, out l, out dirty));
        Assert.Equal((2L * G + 1, 3L * G - 1, true), (o, l, dirty));
        Assert.True(b.TryGetFirstExtent(2 * G, G / 2, out o, out l, out dirty));
        Assert.Equal((2L * G, (long)G / 2, true), (o, l, dirty));
        Assert.True(b.TryGetFirstExtent(5 * G, size - 5 * G, out o, out l, out dirty));
        Assert.Equal((5L * G, size - 5 * G, false), (o, l, dirty));
        Assert.False(b.TryGetFirstExtent(size, 0, out _, out _, out _));
    }

    [Fact]
    public void Check_follows_qemu_order()
    {
        var b = new DirtyBitmap("bm", G, G) { Busy = true, ReadOnly = true, Inconsistent = true };
        b.Check(BitmapCheck.None);
        Assert.Equal("bitmap-busy", Assert.Throws<BlockException>(() => b.Check(BitmapCheck.Default)).Code);
        Assert.Equal("bitmap-read-only", Assert.Throws<BlockException>(() => b.Check(BitmapCheck.ReadOnly | BitmapCheck.Inconsistent)).Code);
        Assert.Equal("bitmap-inconsistent", Assert.Throws<BlockException>(() => b.Check(BitmapCheck.Inconsistent)).Code);
        b.Busy = false;
        BlockException e = Assert.Throws<BlockException>(() => b.Check(BitmapCheck.Default));
        Assert.Equal("bitmap-read-only", e.Code);
        Assert.Contains("'bm'", e.Message);
        Assert.Equal("bitmap-inconsistent", Assert.Throws<BlockException>(() => b.Check(BitmapCheck.AllowReadOnly)).Code);
        b.Inconsistent = false;
        b.Check(BitmapCheck.AllowReadOnly);
        Assert.Throws<BlockException>(() => b.Check(BitmapCheck.Default));
        b.ReadOnly = false;
        b.Check(BitmapCheck.Default);
    }

    [Fact]
    public void MergeFrom_same_and_different_granularity()
    {
        long size = 64 * G + 100;
        var target = new DirtyBitmap("t", size, G);
        var same = new DirtyBitmap("s", size, G);
        same.MarkDirty(3 * G, 2 * G);
        target.MarkDirty(0, 1);
        target.MergeFrom(same);
        Assert.Equal([(0L, (long)G), (3L * G, 2L * G)], target.GetExtents(0, size));

        // A coarse source granule dirties every fine target granule it covers.
        var coarse = new DirtyBitmap("c", size, 4 * G);
        coarse.MarkDirty(8 * G + 1, 1);
        target.MergeFrom(coarse);
        Assert.Equal([(0L, (long)G), (3L * G, 2L * G), (8L * G, 4L * G)], target.GetExtents(0, size));

        // A fine source granule dirties the coarse target granule it touches.
        var fine = new DirtyBitmap("f", size, 512);
        fine.MarkDirty(size - 1, 1);
        fine.MarkDirty(17 * G, 512);
        coarse.MergeFrom(fine);
        Assert.Equal([(8L * G, 4L * G), (16L * G, 4L * G), (64L * G, 100L)], coarse.GetExtents(0, size));
        Assert.Equal(8L * G + 100, coarse.Count);

        // Self-merge is a no-op; size mismatch is refused with QEMU's message.
        long before = target.Count;
        target.MergeFrom(target);
        Assert.Equal(before, target.Count);
        BlockException e = Assert.Throws<BlockException>(() => target.MergeFrom(new DirtyBitmap("x", size + 1, G)));
        Assert.Equal("size-mismatch", e.Code);
        Assert.Contains($"destination size is {size}, source size is {size + 1}", e.Message);
    }

    [Fact]
    public void Snapshot_restore_serialize_and_hash()
    {
        long size = 1000 * G + 1;
        var b = new DirtyBitmap("b", size, G);
        b.MarkDirty(10 * G, 100 * G);
        b.MarkDirty(size - 1, 1);
        string hash = b.Sha256Hex();
        HBitmap backup = b.SnapshotBits();
        byte[] data = b.Serialize();
        Assert.Equal((1001 + 63) / 64 * 8, data.Length);

        b.Clear();
        Assert.NotEqual(hash, b.Sha256Hex());
        b.RestoreBits(backup);
        Assert.Equal(hash, b.Sha256Hex());
        Assert.Equal(100L * G + 1, b.Count);

        var c = new DirtyBitmap("c", size, G);
        c.Deserialize(data);
        Assert.Equal(hash, c.Sha256Hex());
        Assert.Equal(b.Count, c.Count);
        Assert.Equal(b.DirtyGranules, c.DirtyGranules);
        Assert.Throws<ArgumentException>(() => c.Deserialize(new byte[8]));
        Assert.Throws<ArgumentException>(() => c.RestoreBits(new HBitmap(5)));

        // Different granularity over the same bytes is different content, as in QEMU.
        var d = new DirtyBitmap("d", size, 2 * G);
        Assert.NotEqual(new DirtyBitmap("e", size, G).Sha256Hex(), d.Sha256Hex());
    }

    [Fact]
    public void Zero_size_bitmap_is_usable()
    {
        var b = new DirtyBitmap("z", 0, G);
        Assert.Equal(0, b.MarkDirty(0, 0));
        b.ClearDirty(0, 0);
        b.MarkAll();
        Assert.Equal(0, b.Count);
        Assert.False(b.NextDirtyRun(0, G, out _, out _));
        Assert.Empty(b.GetExtents(0, 0));
        Assert.Empty(b.Serialize());
    }
}
