using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// <see cref="HostDeviceImage"/> on a loop device: its size and block status, and every way it zeroes
/// (fallocate on the device, BLKZEROOUT, zero buffers) and discards, over unaligned ranges, checked
/// against a byte model through the image and through the loop's backing file.
/// </summary>
public sealed class HostDeviceImageTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private readonly TempImageDirectory _dir = new();
    private LoopDevice? _loop;

    private LoopDevice Loop => _loop!;

    public async Task InitializeAsync() => _loop = await LoopDevice.AttachAsync(_dir.PathOf("."), Size);

    public async Task DisposeAsync()
    {
        if (_loop is not null)
            await _loop.DisposeAsync();
        _dir.Dispose();
    }

    private static byte[] Pattern(int seed, long length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [LoopDeviceFact]
    public async Task A_device_is_its_whole_size_of_data_and_no_zero_init()
    {
        await using var image = HostDeviceImage.Open(Loop.Device, readOnly: true, Loop.Device);
        Assert.Equal(Size, image.Size);
        Assert.Equal(Size, image.AllocatedBytes);
        Assert.Equal(512, image.LogicalBlockSize);
        Assert.False(image.HasZeroInit);
        // The backing file is one hole: a device still reports data, as QEMU's host_device does.
        var extent = await image.GetBlockStatusAsync(4096, Size);
        Assert.Equal(new ImageExtent(4096, Size - 4096, ExtentKind.Data), extent);
    }

    [LoopDeviceFact]
    public void Only_a_block_device_is_opened()
    {
        var file = _dir.PathOf("file.img");
        File.WriteAllBytes(file, new byte[4096]);
        Assert.Equal("not-a-block-device", Assert.Throws<BlockException>(() => HostDeviceImage.Open(file, readOnly: false, file)).Code);
        Assert.Equal("not-a-block-device", Assert.Throws<BlockException>(() => HostDeviceImage.Open("/dev/null", readOnly: true, "/dev/null")).Code);
        Assert.Equal("image-not-found", Assert.Throws<BlockException>(() => HostDeviceImage.Open(_dir.PathOf("missing"), readOnly: true, "missing")).Code);
    }

    [LoopDeviceFact]
    public async Task Write_zeroes_reads_back_as_zeroes_by_each_way_the_device_offers()
    {
        // (punch hole, BLKZEROOUT) disabled: none (fallocate on the device), punch (BLKZEROOUT), both (zero buffers).
        foreach (var (noPunch, noZeroOut) in new[] { (false, false), (true, false), (true, true) })
        {
            var model = Pattern(1, Size);
            await using var image = HostDeviceImage.Open(Loop.Device, readOnly: false, Loop.Device);
            image.DisableZeroing(noPunch, noZeroOut);
            await image.WriteAsync(0, model);
            foreach (var (offset, length, unmap) in new[] { (1000L, 70_000L, true), (131_072L, 65_536L, false), (1_048_577L, 1_000_000L, false), (3_000_000L, 511L, true), (4_194_304L, 2_097_152L, true) })
            {
                await image.WriteZeroesAsync(offset, length, unmap);
                Array.Clear(model, (int)offset, (int)length);
            }
            var read = new byte[Size];
            await image.ReadAsync(0, read);
            Assert.True(model.AsSpan().SequenceEqual(read), $"through the image, punch {!noPunch}, zeroout {!noZeroOut}");
            await image.FlushAsync();
            var backing = await File.ReadAllBytesAsync(Loop.BackingFile);
            Assert.True(model.AsSpan().SequenceEqual(backing), $"in the backing file, punch {!noPunch}, zeroout {!noZeroOut}");
        }
    }

    [LoopDeviceFact]
    public async Task Discard_drops_whole_blocks_only_and_a_loop_device_reads_them_as_zeroes()
    {
        var model = Pattern(2, Size);
        await using var image = HostDeviceImage.Open(Loop.Device, readOnly: false, Loop.Device);
        await image.WriteAsync(0, model);
        // 100..1 MiB+100: the partial blocks at both ends stay, the 2047 whole blocks between go.
        await image.DiscardAsync(100, (1 << 20) + 100 - 100);
        Array.Clear(model, 512, (1 << 20) - 512);
        await image.DiscardAsync(2_000_000, 100); // inside one block: nothing
        var read = new byte[Size];
        await image.ReadAsync(0, read);
        Assert.True(model.AsSpan().SequenceEqual(read));
    }

    [LoopDeviceFact]
    public async Task A_second_writer_is_refused_and_a_reader_too()
    {
        await using var image = HostDeviceImage.Open(Loop.Device, readOnly: false, Loop.Device);
        Assert.Equal("image-locked", Assert.Throws<BlockException>(() => HostDeviceImage.Open(Loop.Device, readOnly: false, Loop.Device)).Code);
        Assert.Equal("image-locked", Assert.Throws<BlockException>(() => HostDeviceImage.Open(Loop.Device, readOnly: true, Loop.Device)).Code);
    }
}
