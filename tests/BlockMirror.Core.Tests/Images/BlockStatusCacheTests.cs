using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>The one-region data cache behind RawFileImage's block status (QEMU's bdrv_bsc_*).</summary>
public sealed class BlockStatusCacheTests
{
    [Fact]
    public void Empty_AnswersNothing()
    {
        var cache = new BlockStatusCache();

        Assert.False(cache.TryGetData(0, out _));
    }

    [Fact]
    public void Filled_AnswersOffsetsInsideTheRegionOnly()
    {
        var cache = new BlockStatusCache();
        cache.Fill(4096, 65536, cache.Generation);

        Assert.True(cache.TryGetData(4096, out var end));
        Assert.Equal(65536, end);
        Assert.True(cache.TryGetData(65535, out _));
        Assert.False(cache.TryGetData(4095, out _));
        Assert.False(cache.TryGetData(65536, out _));
    }

    [Fact]
    public void Fill_JoinsAnOverlappingOrTouchingRegion_AndReplacesADisjointOne()
    {
        var cache = new BlockStatusCache();
        cache.Fill(100, 200, cache.Generation);
        cache.Fill(50, 150, cache.Generation);
        cache.Fill(200, 300, cache.Generation);

        Assert.True(cache.TryGetData(50, out var end));
        Assert.Equal(300, end);

        cache.Fill(1000, 2000, cache.Generation);
        Assert.False(cache.TryGetData(50, out _));
        Assert.True(cache.TryGetData(1000, out end));
        Assert.Equal(2000, end);
    }

    [Fact]
    public void Invalidate_ForgetsAnOverlappingRegion_AndKeepsADisjointOne()
    {
        var cache = new BlockStatusCache();
        cache.Fill(0, 1000, cache.Generation);

        cache.Invalidate(1000, 10);
        Assert.True(cache.TryGetData(0, out _));

        cache.Invalidate(999, 1);
        Assert.False(cache.TryGetData(0, out _));
    }

    [Fact]
    public void Fill_WithAGenerationTakenBeforeAnInvalidation_IsIgnored()
    {
        // A block status that asked the kernel before a discard finished must not cache what it saw.
        var cache = new BlockStatusCache();
        var before = cache.Generation;

        cache.Invalidate(5000, 10); // even one that does not overlap: the answer may be older than it
        cache.Fill(0, 1000, before);

        Assert.False(cache.TryGetData(0, out _));
        cache.Fill(0, 1000, cache.Generation);
        Assert.True(cache.TryGetData(0, out _));
    }
}
