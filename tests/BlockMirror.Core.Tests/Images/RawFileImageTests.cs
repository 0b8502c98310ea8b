using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>RawFileImage against real files in a private temp directory.</summary>
public sealed class RawFileImageTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        // Random bytes may contain zeroes; make every byte non-zero so "reads zero" checks are sharp.
        for (var i = 0; i < bytes.Length; i++)
            bytes[i] |= 1;
        return bytes;
    }

    private static async Task<byte[]> ReadAsync(IBlockImage image, long offset, int length)
    {
        var buffer = new byte[length];
        Array.Fill(buffer, (byte)0xCC); // so a read that leaves bytes untouched cannot pass as zeroes
        await image.ReadAsync(offset, buffer);
        return buffer;
    }

    private static void AssertAllZero(byte[] bytes) =>
        Assert.True(Array.TrueForAll(bytes, b => b == 0), "expected only zeroes");

    private static async Task<List<ImageExtent>> StatusWalkAsync(IBlockImage image)
    {
        // Raw block status calls, not ImageExtents, so this checks what the image itself answers.
        var extents = new List<ImageExtent>();
        for (long pos = 0; pos < image.Size;)
        {
            var e = await image.GetBlockStatusAsync(pos, image.Size - pos);
            Assert.Equal(pos, e.Offset);
            Assert.True(e.Length > 0);
            extents.Add(e);
            pos = e.End;
        }
        return extents;
    }

    [Fact]
    public async Task Create_MakesASparseFileOfTheGivenSize()
    {
        var path = _dir.PathOf("a.raw");
        await using var image = RawFileImage.Create(path, 1L << 30);

        Assert.Equal(1L << 30, image.Size);
        Assert.Equal(1L << 30, new FileInfo(path).Length);
        Assert.True(image.AllocatedBytes < 64 * KiB, $"allocated {image.AllocatedBytes}");
        Assert.False(image.ReadOnly);
        Assert.True(image.HasZeroInit);
        Assert.Equal(path, image.Location);
        AssertAllZero(await ReadAsync(image, (1L << 30) - MiB, MiB));
    }

    [Fact]
    public async Task Create_RefusesAnExistingFile()
    {
        var path = _dir.PathOf("a.raw");
        await File.WriteAllBytesAsync(path, [1, 2, 3]);

        Assert.Throws<IOException>(() => RawFileImage.Create(path, MiB));
        Assert.Equal(3, new FileInfo(path).Length); // untouched, not deleted
    }

    [Fact]
    public void Open_MissingFile_ThrowsFileNotFound() =>
        Assert.Throws<FileNotFoundException>(() => RawFileImage.Open(_dir.PathOf("nope.raw"), readOnly: true));

    [Fact]
    public async Task Open_ReportsTheFileLengthAndMode()
    {
        var path = _dir.PathOf("a.raw");
        await File.WriteAllBytesAsync(path, Pattern(12345, 1));

        await using var image = RawFileImage.Open(path, readOnly: true);

        Assert.Equal(12345, image.Size);
        Assert.True(image.ReadOnly);
        Assert.Equal(Pattern(12345, 1), await ReadAsync(image, 0, 12345));
    }

    [Fact]
    public async Task A_write_then_a_read_round_trip_at_unaligned_offsets()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        var first = Pattern(10007, 2);
        var second = Pattern(MiB + 3, 3);

        await image.WriteAsync(12345, first);
        await image.WriteAsync(MiB + 511, second);

        var back = await ReadAsync(image, 10000, 30000);
        AssertAllZero(back[..2345]);
        Assert.Equal(first, back[2345..(2345 + 10007)]);
        AssertAllZero(back[(2345 + 10007)..]);
        Assert.Equal(second, await ReadAsync(image, MiB + 511, second.Length));
    }

    [Fact]
    public async Task Write_WithFua_IsReadBack()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        var data = Pattern(4096, 4);

        await image.WriteAsync(8192, data, fua: true);

        Assert.Equal(data, await ReadAsync(image, 8192, 4096));
    }

    [Fact]
    public async Task Written_data_is_in_the_file_after_dispose()
    {
        var path = _dir.PathOf("a.raw");
        var data = Pattern(5000, 5);
        await using (var image = RawFileImage.Create(path, 64 * KiB))
        {
            await image.WriteAsync(777, data);
            await image.FlushAsync();
        }

        var file = await File.ReadAllBytesAsync(path);
        Assert.Equal(64 * KiB, file.Length);
        Assert.Equal(data, file[777..5777]);
    }

    [Fact]
    public async Task Block_status_of_a_fresh_image_is_one_zero_extent()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 8 * MiB);

        Assert.Equal([new ImageExtent(0, 8 * MiB, ExtentKind.Zero)], await StatusWalkAsync(image));
    }

    [Fact]
    public async Task Block_status_after_a_write_is_data_over_the_written_block_and_zero_elsewhere()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 8 * MiB);

        // Not flushed on purpose: block status must see data still in the page cache.
        await image.WriteAsync(5000, Pattern(100, 6));

        Assert.Equal(
            [
                new ImageExtent(0, 4096, ExtentKind.Zero),
                new ImageExtent(4096, 4096, ExtentKind.Data),
                new ImageExtent(8192, 8 * MiB - 8192, ExtentKind.Zero),
            ],
            await StatusWalkAsync(image));
    }

    [Fact]
    public async Task Block_status_of_data_running_to_the_end()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        await image.WriteAsync(MiB - 4096, Pattern(4096, 7));

        Assert.Equal(
            [new ImageExtent(0, MiB - 4096, ExtentKind.Zero), new ImageExtent(MiB - 4096, 4096, ExtentKind.Data)],
            await StatusWalkAsync(image));
    }

    [Fact]
    public async Task Block_status_is_clipped_to_the_max_length_and_the_size()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        await image.WriteAsync(0, Pattern(64 * KiB, 8));

        Assert.Equal(new ImageExtent(100, 1000, ExtentKind.Data), await image.GetBlockStatusAsync(100, 1000));
        Assert.Equal(new ImageExtent(64 * KiB, 10, ExtentKind.Zero), await image.GetBlockStatusAsync(64 * KiB, 10));
        Assert.Equal(new ImageExtent(MiB - 10, 10, ExtentKind.Zero), await image.GetBlockStatusAsync(MiB - 10, long.MaxValue));
        Assert.Equal(0, (await image.GetBlockStatusAsync(MiB, 4096)).Length);
    }

    [Fact]
    public async Task Write_zeroes_that_may_unmap_punches_the_range_and_it_reads_zero()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        await image.WriteAsync(MiB, Pattern(2 * MiB, 9));
        await image.FlushAsync();
        var before = image.AllocatedBytes;
        Assert.True(before >= 2 * MiB, $"allocated {before}");

        await image.WriteZeroesAsync(MiB, 2 * MiB, mayUnmap: true);

        Assert.True(image.AllocatedBytes <= before - 2 * MiB, $"allocated {image.AllocatedBytes} (was {before})");
        AssertAllZero(await ReadAsync(image, MiB, 2 * MiB));
        Assert.Equal([new ImageExtent(0, 4 * MiB, ExtentKind.Zero)], await StatusWalkAsync(image));
    }

    [Fact]
    public async Task Write_zeroes_without_unmap_reads_zero_and_stays_allocated()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        await image.WriteAsync(MiB, Pattern(2 * MiB, 10));
        await image.FlushAsync();

        await image.WriteZeroesAsync(MiB, 2 * MiB, mayUnmap: false);

        AssertAllZero(await ReadAsync(image, MiB, 2 * MiB));
        Assert.True(image.AllocatedBytes >= 2 * MiB, $"allocated {image.AllocatedBytes}");
    }

    [Fact]
    public async Task Write_zeroes_on_a_fresh_range_without_unmap_allocates_zeroes()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);

        await image.WriteZeroesAsync(0, MiB, mayUnmap: false);

        AssertAllZero(await ReadAsync(image, 0, MiB));
        Assert.True(image.AllocatedBytes >= MiB, $"allocated {image.AllocatedBytes}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Write_zeroes_of_an_unaligned_range_keeps_the_neighbouring_bytes(bool mayUnmap)
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        var data = Pattern(64 * KiB, 11);
        await image.WriteAsync(0, data);
        await image.FlushAsync();

        await image.WriteZeroesAsync(1000, 3000, mayUnmap);
        await image.WriteZeroesAsync(20000, 9000, mayUnmap);

        var expected = (byte[])data.Clone();
        Array.Clear(expected, 1000, 3000);
        Array.Clear(expected, 20000, 9000);
        Assert.Equal(expected, await ReadAsync(image, 0, 64 * KiB));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Write_zeroes_without_fallocate_writes_zero_buffers(bool mayUnmap)
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        var data = Pattern(4 * MiB, 18);
        await image.WriteAsync(0, data);
        image.DisableFallocate();

        // More than one zero buffer's worth, starting and ending mid-block.
        await image.WriteZeroesAsync(100, 2 * MiB + 500 * KiB, mayUnmap);

        var expected = (byte[])data.Clone();
        Array.Clear(expected, 100, 2 * MiB + 500 * KiB);
        Assert.Equal(expected, await ReadAsync(image, 0, 4 * MiB));
    }

    [Fact]
    public async Task Discard_DeallocatesTheRangeAndItReadsZero()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB);
        await image.WriteAsync(0, Pattern(4 * MiB, 12));
        await image.FlushAsync();
        var before = image.AllocatedBytes;

        await image.DiscardAsync(MiB, 2 * MiB);

        Assert.True(image.AllocatedBytes <= before - 2 * MiB, $"allocated {image.AllocatedBytes} (was {before})");
        AssertAllZero(await ReadAsync(image, MiB, 2 * MiB));
        Assert.Equal(Pattern(4 * MiB, 12)[..MiB], await ReadAsync(image, 0, MiB));
        Assert.Equal(
            [
                new ImageExtent(0, MiB, ExtentKind.Data),
                new ImageExtent(MiB, 2 * MiB, ExtentKind.Zero),
                new ImageExtent(3 * MiB, MiB, ExtentKind.Data),
            ],
            await StatusWalkAsync(image));
    }

    [Fact]
    public async Task Flush_SucceedsReadWriteAndReadOnly()
    {
        var path = _dir.PathOf("a.raw");
        await using (var image = RawFileImage.Create(path, MiB))
        {
            await image.WriteAsync(0, Pattern(4096, 13));
            await image.FlushAsync();
        }
        await using var reader = RawFileImage.Open(path, readOnly: true);
        await reader.FlushAsync();
    }

    [Fact]
    public async Task A_read_past_a_truncated_end_reads_zeroes()
    {
        var path = _dir.PathOf("a.raw");
        await using var image = RawFileImage.Create(path, MiB);
        var data = Pattern(MiB, 14);
        await image.WriteAsync(0, data);

        // Someone else shortens the file behind the image's back.
        using (var other = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            RandomAccess.SetLength(other, 4196);

        Assert.Equal(MiB, image.Size);
        var back = await ReadAsync(image, 0, MiB);
        Assert.Equal(data[..4196], back[..4196]);
        AssertAllZero(back[4196..]);
        Assert.Equal(new ImageExtent(8192, MiB - 8192, ExtentKind.Zero), await image.GetBlockStatusAsync(8192, MiB));
        Assert.Equal(new ImageExtent(0, 4196, ExtentKind.Data), await image.GetBlockStatusAsync(0, MiB));
    }

    [Fact]
    public async Task A_read_only_image_refuses_writes()
    {
        var path = _dir.PathOf("a.raw");
        await RawFileImage.Create(path, MiB).DisposeAsync();
        await using var image = RawFileImage.Open(path, readOnly: true);

        await Assert.ThrowsAsync<InvalidOperationException>(async () => await image.WriteAsync(0, new byte[512]));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await image.WriteZeroesAsync(0, 512, mayUnmap: true));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await image.DiscardAsync(0, 512));
    }

    [Fact]
    public async Task Lock_ASecondReadWriteOpenIsRefused()
    {
        var path = _dir.PathOf("a.raw");
        await using var first = RawFileImage.Create(path, MiB);

        var e = Assert.Throws<BlockException>(() => RawFileImage.Open(path, readOnly: false));

        Assert.Equal("image-locked", e.Code);
        Assert.Equal(BlockErrorKind.Conflict, e.Kind);
        Assert.Equal($"Failed to get \"write\" lock: Is another process using the image [{path}]?", e.Message);
        // The refused open took nothing away from the holder.
        await first.WriteAsync(0, Pattern(512, 15));
    }

    [Fact]
    public async Task Lock_TwoReadersAreAllowed()
    {
        var path = _dir.PathOf("a.raw");
        await RawFileImage.Create(path, MiB).DisposeAsync();

        await using var first = RawFileImage.Open(path, readOnly: true);
        await using var second = RawFileImage.Open(path, readOnly: true);

        AssertAllZero(await ReadAsync(second, 0, 4096));
    }

    [Fact]
    public async Task Lock_AReaderIsRefusedWhileAWriterHoldsTheImage()
    {
        var path = _dir.PathOf("a.raw");
        await using var writer = RawFileImage.Create(path, MiB);

        var e = Assert.Throws<BlockException>(() => RawFileImage.Open(path, readOnly: true));

        Assert.Equal("image-locked", e.Code);
        Assert.Equal($"Failed to get shared \"write\" lock: Is another process using the image [{path}]?", e.Message);
    }

    [Fact]
    public async Task Lock_AWriterIsRefusedWhileAReaderHoldsTheImage()
    {
        var path = _dir.PathOf("a.raw");
        await RawFileImage.Create(path, MiB).DisposeAsync();
        await using var reader = RawFileImage.Open(path, readOnly: true);

        var e = Assert.Throws<BlockException>(() => RawFileImage.Open(path, readOnly: false));

        Assert.Equal("image-locked", e.Code);
        Assert.StartsWith("Failed to get \"write\" lock", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Lock_IsReleasedOnDispose_AndARefusedOpenLeavesNoLockBehind()
    {
        var path = _dir.PathOf("a.raw");
        var first = RawFileImage.Create(path, MiB);
        Assert.Throws<BlockException>(() => RawFileImage.Open(path, readOnly: false));
        Assert.Throws<BlockException>(() => RawFileImage.Open(path, readOnly: true));

        await first.DisposeAsync();

        await using var again = RawFileImage.Open(path, readOnly: false);
        await again.WriteAsync(0, Pattern(512, 16));
    }

    [Fact]
    public async Task Dispose_IsIdempotent()
    {
        var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);

        await image.DisposeAsync();
        await image.DisposeAsync();

        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await image.ReadAsync(0, new byte[512]));
    }

    [Fact]
    public async Task Allocated_bytes_follow_writes()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 64 * MiB);
        var before = image.AllocatedBytes;

        await image.WriteAsync(10 * MiB, Pattern(MiB, 17));
        await image.FlushAsync();

        Assert.InRange(image.AllocatedBytes - before, MiB, MiB + 64 * KiB);
    }

    [Fact]
    public async Task Concurrent_writes_and_reads_do_not_interfere()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 16 * MiB);
        var chunks = Enumerable.Range(0, 16).Select(i => Pattern(MiB, 100 + i)).ToArray();

        await Task.WhenAll(chunks.Select((c, i) => image.WriteAsync((long)i * MiB, c).AsTask()));
        var back = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => ReadAsync(image, (long)i * MiB, MiB)));

        for (var i = 0; i < 16; i++)
            Assert.Equal(chunks[i], back[i]);
    }
}
