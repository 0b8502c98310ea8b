using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>ImageExtents over real raw files, some answering block status in small pieces.</summary>
public sealed class ImageExtentsTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static async Task<List<ImageExtent>> CollectAsync(IBlockImage image, long offset, long length, CancellationToken ct = default)
    {
        var list = new List<ImageExtent>();
        await foreach (var e in ImageExtents.EnumerateAsync(image, offset, length, ct))
            list.Add(e);
        return list;
    }

    private async Task<RawFileImage> ImageWithDataAsync()
    {
        // Data at [128 KiB, 192 KiB) and [512 KiB, 516 KiB), zeroes elsewhere.
        var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        await image.WriteAsync(128 * KiB, Enumerable.Repeat((byte)1, 64 * KiB).ToArray());
        await image.WriteAsync(512 * KiB, Enumerable.Repeat((byte)2, 4 * KiB).ToArray());
        return image;
    }

    [Fact]
    public async Task A_fresh_image_is_one_zero_extent()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 8 * MiB);

        Assert.Equal([new ImageExtent(0, 8 * MiB, ExtentKind.Zero)], await CollectAsync(image, 0, 8 * MiB));
    }

    [Fact]
    public async Task Pieces_of_the_same_kind_are_merged()
    {
        await using var chunked = new ChunkedStatusImage(await ImageWithDataAsync(), 4 * KiB);

        var extents = await CollectAsync(chunked, 0, MiB);

        Assert.Equal(
            [
                new ImageExtent(0, 128 * KiB, ExtentKind.Zero),
                new ImageExtent(128 * KiB, 64 * KiB, ExtentKind.Data),
                new ImageExtent(192 * KiB, 320 * KiB, ExtentKind.Zero),
                new ImageExtent(512 * KiB, 4 * KiB, ExtentKind.Data),
                new ImageExtent(516 * KiB, MiB - 516 * KiB, ExtentKind.Zero),
            ],
            extents);
        Assert.Equal(MiB / (4 * KiB), chunked.StatusCalls); // it really was answered in pieces
    }

    [Fact]
    public async Task A_sub_range_is_covered_exactly()
    {
        await using var chunked = new ChunkedStatusImage(await ImageWithDataAsync(), 3000);

        var extents = await CollectAsync(chunked, 130 * KiB + 7, 400 * KiB);

        Assert.Equal(
            [
                new ImageExtent(130 * KiB + 7, 62 * KiB - 7, ExtentKind.Data),
                new ImageExtent(192 * KiB, 320 * KiB, ExtentKind.Zero),
                new ImageExtent(512 * KiB, 4 * KiB, ExtentKind.Data),
                new ImageExtent(516 * KiB, 14 * KiB + 7, ExtentKind.Zero),
            ],
            extents);
    }

    [Fact]
    public async Task An_empty_range_yields_nothing()
    {
        await using var image = await ImageWithDataAsync();

        Assert.Empty(await CollectAsync(image, 4096, 0));
    }

    [Fact]
    public async Task Cancellation_StopsTheWalk()
    {
        await using var image = await ImageWithDataAsync();
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => CollectAsync(image, 0, MiB, cts.Token));
    }
}
