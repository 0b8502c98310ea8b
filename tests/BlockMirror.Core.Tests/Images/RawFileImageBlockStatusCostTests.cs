using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// Which lseeks RawFileImage's block status issues. SEEK_HOLE can walk the page cache for
/// milliseconds (a fallocated image after random writes, before writeback), and every lseek on
/// one file serializes on its f_pos_lock: one per 4 KiB NBD read stalled reads for a second
/// (bench/README.md, "NBD reads stalled after random writes"). lseek also moves the file offset,
/// which nothing else of the image uses (it reads and writes with pread/pwrite), so the offset
/// after a query tells which seek ran last: a sentinel left in place means none ran.
/// </summary>
public sealed class RawFileImageBlockStatusCostTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;
    private const int SeekSet = 0;
    private const int SeekCur = 1;
    private const long Sentinel = 12345;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>A 4 MiB image whose first MiB is written (not flushed: still in the page cache) and the rest a hole.</summary>
    private async Task<RawFileImage> ImageWithDataInTheFirstMiBAsync()
    {
        var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        var data = new byte[MiB];
        Array.Fill(data, (byte)0x5A);
        await image.WriteAsync(0, data);
        return image;
    }

    private static void SetFileOffset(RawFileImage image, long offset) =>
        Assert.Equal(offset, LibC.lseek((int)image.Handle.DangerousGetHandle(), offset, SeekSet));

    private static long FileOffset(RawFileImage image) =>
        LibC.lseek((int)image.Handle.DangerousGetHandle(), 0, SeekCur);

    [Fact]
    public async Task BlockStatus_OfARangeInsideOneDataBlock_DoesNotSeekTheHole()
    {
        await using var image = await ImageWithDataInTheFirstMiBAsync();

        SetFileOffset(image, Sentinel);
        Assert.Equal(new ImageExtent(8 * KiB, 4 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(8 * KiB, 4 * KiB));
        Assert.Equal(8 * KiB, FileOffset(image)); // SEEK_DATA's answer; a SEEK_HOLE would have left 1 MiB

        Assert.Equal(new ImageExtent(20 * KiB + 100, 1000, ExtentKind.Data), await image.GetBlockStatusAsync(20 * KiB + 100, 1000));
        Assert.Equal(20 * KiB + 100, FileOffset(image));
    }

    [Fact]
    public async Task BlockStatus_InsideTheDataRegionFoundBefore_AsksTheKernelNothing()
    {
        await using var image = await ImageWithDataInTheFirstMiBAsync();
        Assert.Equal(new ImageExtent(0, 64 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(0, 64 * KiB));

        SetFileOffset(image, Sentinel);
        Assert.Equal(new ImageExtent(512 * KiB, 64 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(512 * KiB, 64 * KiB));
        Assert.Equal(new ImageExtent(MiB - 4 * KiB, 4 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(MiB - 4 * KiB, MiB));
        Assert.Equal(Sentinel, FileOffset(image));

        // Past the region the kernel is asked again, and the hole is still a hole.
        Assert.Equal(new ImageExtent(MiB, 3 * MiB, ExtentKind.Zero), await image.GetBlockStatusAsync(MiB, 4 * MiB));
    }

    [Fact]
    public async Task Discard_InsideTheCachedDataRegion_IsSeenByTheNextBlockStatus()
    {
        await using var image = await ImageWithDataInTheFirstMiBAsync();
        await image.FlushAsync();
        Assert.Equal(new ImageExtent(0, MiB, ExtentKind.Data), await image.GetBlockStatusAsync(0, 4 * MiB));

        await image.DiscardAsync(256 * KiB, 64 * KiB);

        Assert.Equal(new ImageExtent(0, 256 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(0, 4 * MiB));
        Assert.Equal(new ImageExtent(256 * KiB, 64 * KiB, ExtentKind.Zero), await image.GetBlockStatusAsync(256 * KiB, 4 * MiB));
        Assert.Equal(new ImageExtent(320 * KiB, 704 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(320 * KiB, 4 * MiB));
    }

    [Fact]
    public async Task WriteZeroesWithUnmap_InsideTheCachedDataRegion_IsSeenByTheNextBlockStatus()
    {
        await using var image = await ImageWithDataInTheFirstMiBAsync();
        await image.FlushAsync();
        Assert.Equal(new ImageExtent(0, MiB, ExtentKind.Data), await image.GetBlockStatusAsync(0, 4 * MiB));

        await image.WriteZeroesAsync(512 * KiB, 128 * KiB, mayUnmap: true);

        Assert.Equal(new ImageExtent(0, 512 * KiB, ExtentKind.Data), await image.GetBlockStatusAsync(0, 4 * MiB));
        Assert.Equal(new ImageExtent(512 * KiB, 128 * KiB, ExtentKind.Zero), await image.GetBlockStatusAsync(512 * KiB, 4 * MiB));
    }
}
