using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

public sealed class BitmapSizeLimitTests
{
    [Fact]
    public void A_bitmap_with_more_granules_than_a_bitmap_holds_is_a_client_error()
    {
        var e = Assert.Throws<BlockException>(() => new DirtyBitmap("b", 1L << 60, DirtyBitmap.DefaultGranularity));
        Assert.Equal("bitmap-too-large", e.Code);
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
        Assert.Contains($"more than the {HBitmap.MaxLength} supported", e.Message, StringComparison.Ordinal);
    }
}
