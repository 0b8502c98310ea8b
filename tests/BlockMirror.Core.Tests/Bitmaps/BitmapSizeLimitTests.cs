using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

public sealed class BitmapSizeLimitTests
{
    [Fact]
    public void A_bitmap_with_more_granules_than_a_bitmap_holds_is_a_client_error_naming_a_granularity_that_fits()
    {
        var e = Assert.Throws<BlockException>(() => new DirtyBitmap("b", 1L << 60, DirtyBitmap.DefaultGranularity));
        Assert.Equal("bitmap-too-large", e.Code);
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
        Assert.Contains("at least 16777216", e.Message, StringComparison.Ordinal);
        Assert.Equal(HBitmap.MaxLength, (1L << 60) >> 24); // that granularity fits exactly
    }
}
