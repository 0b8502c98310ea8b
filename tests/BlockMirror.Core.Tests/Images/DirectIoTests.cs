using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// Images opened with O_DIRECT (cache.direct) on real files and devices: aligned and unaligned
/// reads and writes, write-zeroes and discards against a byte model, seeded; concurrent unaligned
/// writes to disjoint bytes of the same blocks (a read-modify-write that is not serialised loses
/// some of them); a 4K-sector device; a file system without O_DIRECT; copy offload's alignment.
/// </summary>
public sealed class DirectIoTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Direct_file_matches_a_byte_model_under_concurrent_unaligned_writes(int seed)
    {
        // 4 MiB + 512: the last block is one sector, below a 4K page.
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), 4 * MiB + 512, direct: true);
        Assert.True(image.CacheDirect);
        var model = new byte[image.Size];
        await RunModelAsync(image, model, seed, discardReadsZero: true);
    }

    [LoopDeviceFact]
    public async Task Direct_device_with_4K_sectors_matches_a_byte_model()
    {
        await using var loop = await LoopDevice.AttachAsync(_dir.PathOf("."), 4 * MiB, sectorSize: 4096);
        await using var image = HostDeviceImage.Open(loop.Device, readOnly: false, loop.Device, direct: true);
        Assert.True(image.CacheDirect);
        Assert.Equal(4096, image.LogicalBlockSize);
        var model = new byte[image.Size];
        // A loop device's discard punches its file, but whether a device reads zeroes after a discard is its own business.
        await RunModelAsync(image, model, seed: 7, discardReadsZero: false);
        // Through the device's backing file as well: the bytes reached the device, not a cache of ours.
        await loop.FlushAsync();
        var backing = await File.ReadAllBytesAsync(loop.BackingFile);
        Assert.True(model.AsSpan().SequenceEqual(backing), "the backing file differs from the model");
    }

    [Fact]
    public async Task Direct_file_descriptor_has_O_DIRECT_and_a_buffered_one_does_not()
    {
        var path = _dir.PathOf("a.raw");
        await using (var direct = RawFileImage.Create(path, MiB, direct: true))
            Assert.NotEqual(0, StatusFlags(direct) & LibC.O_DIRECT);
        await using (var direct = RawFileImage.Open(path, readOnly: true, direct: true))
            Assert.NotEqual(0, StatusFlags(direct) & LibC.O_DIRECT);
        await using var buffered = RawFileImage.Open(path, readOnly: false);
        Assert.Equal(0, StatusFlags(buffered) & LibC.O_DIRECT);
        Assert.False(buffered.CacheDirect);
    }

    [Fact]
    public async Task Direct_file_never_answers_from_the_page_cache_inline()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB, direct: true);
        var data = Pattern(4 * KiB, 3);
        Assert.False(image.TryWriteInline(0, data));
        await image.WriteAsync(0, data);
        Assert.False(image.TryReadCached(0, new byte[4 * KiB]));
    }

    [LoopDeviceFact]
    public async Task Direct_open_on_a_file_system_without_O_DIRECT_is_refused_and_a_create_leaves_nothing()
    {
        await using var ramfs = await TmpfsMount.MountAsync(_dir.PathOf("ramfs"), "4m", type: "ramfs");
        var existing = Path.Combine(ramfs.Path, "old.raw");
        await File.WriteAllBytesAsync(existing, new byte[64 * KiB]);

        var open = Assert.Throws<BlockException>(() => RawFileImage.Open(existing, readOnly: false, "old.raw", direct: true));
        Assert.Equal("direct-io-unsupported", open.Code);
        Assert.Contains("old.raw", open.Message);
        var created = Path.Combine(ramfs.Path, "new.raw");
        Assert.Equal("direct-io-unsupported", Assert.Throws<BlockException>(() => RawFileImage.Create(created, MiB, "new.raw", direct: true)).Code);
        Assert.False(File.Exists(created), "a refused create left its file behind");
        // The same file opens buffered: it is the cache mode that is refused, not the file.
        await using var buffered = RawFileImage.Open(existing, readOnly: false);
    }

    [Fact]
    public async Task Copy_offload_into_a_direct_file_takes_aligned_ranges_and_refuses_an_unaligned_one_for_that_range_only()
    {
        await using var source = RawFileImage.Create(_dir.PathOf("s.raw"), MiB);
        await using var target = RawFileImage.Create(_dir.PathOf("t.raw"), MiB, direct: true);
        var data = Pattern(MiB, 11);
        await source.WriteAsync(0, data);
        ICopyRangeTarget copy = target;

        await copy.CopyRangeFromAsync(source, 64 * KiB, 128 * KiB, refuseLeadingZeroes: false);
        var refused = await Assert.ThrowsAsync<CopyRangeRefusedException>(() => copy.CopyRangeFromAsync(source, 100, 1000, refuseLeadingZeroes: false).AsTask());
        Assert.False(refused.Permanent);

        var read = new byte[MiB];
        await target.ReadAsync(0, read);
        Assert.True(read.AsSpan(64 * KiB, 128 * KiB).SequenceEqual(data.AsSpan(64 * KiB, 128 * KiB)), "the offloaded range differs");
        Assert.True(read.AsSpan(0, 64 * KiB).IndexOfAnyExcept((byte)0) < 0, "bytes before the copy changed");
    }

    [Fact]
    public async Task Copy_offload_from_a_direct_file_probes_its_leading_zeroes_through_aligned_memory()
    {
        // The probe reads the source on its own descriptor: an O_DIRECT one takes only aligned
        // memory (a stack buffer fails with EINVAL), so a direct source needs the aligned pool.
        await using var source = RawFileImage.Create(_dir.PathOf("s.raw"), MiB, direct: true);
        await using var target = RawFileImage.Create(_dir.PathOf("t.raw"), MiB);
        var data = Pattern(256 * KiB, 12);
        await source.WriteAsync(512 * KiB, data);
        ICopyRangeTarget copy = target;

        var zeroes = await Assert.ThrowsAsync<CopyRangeRefusedException>(
            () => copy.CopyRangeFromAsync(source, 0, 256 * KiB, refuseLeadingZeroes: true).AsTask());
        Assert.False(zeroes.Permanent);
        await copy.CopyRangeFromAsync(source, 512 * KiB, 256 * KiB, refuseLeadingZeroes: true);

        var read = new byte[256 * KiB];
        await target.ReadAsync(512 * KiB, read);
        Assert.True(read.AsSpan().SequenceEqual(data), "the offloaded range differs");
    }

    [Fact]
    public async Task Reopened_direct_file_reads_what_a_buffered_open_wrote_and_the_other_way_round()
    {
        var path = _dir.PathOf("a.raw");
        var first = Pattern(3 * KiB + 17, 5);
        var second = Pattern(5 * KiB + 3, 6);
        await using (var buffered = RawFileImage.Create(path, MiB))
            await buffered.WriteAsync(1000, first);
        await using (var direct = RawFileImage.Open(path, readOnly: false, direct: true))
        {
            var read = new byte[first.Length];
            await direct.ReadAsync(1000, read);
            Assert.Equal(first, read);
            await direct.WriteAsync(777, second);
        }
        var model = new byte[MiB];
        first.CopyTo(model, 1000);
        second.CopyTo(model, 777);
        Assert.Equal(model, await File.ReadAllBytesAsync(path));
    }

    /// <summary>
    /// Rounds of: a batch of concurrent writes to disjoint, mostly unaligned byte ranges packed into
    /// one 64 KiB window (so neighbours share blocks), sometimes from page-aligned memory; now and
    /// then a write-zeroes or discard; then reads of random ranges compared with the model. At the
    /// end the whole image, read in odd pieces.
    /// </summary>
    private static async Task RunModelAsync(IBlockImage image, byte[] model, int seed, bool discardReadsZero)
    {
        var random = new Random(seed);
        for (var round = 0; round < 60; round++)
        {
            var window = 64 * KiB;
            var start = random.NextInt64(0, image.Size - window + 1);
            var writes = new List<(long Offset, byte[] Data)>();
            for (var at = start + random.Next(0, 700); at < start + window - 1;)
            {
                var length = (int)Math.Min(random.Next(1, 6000), start + window - at);
                writes.Add((at, Pattern(length, random.Next())));
                at += length + random.Next(0, 3); // often adjacent: the same block, different bytes
            }
            var aligned = new AlignedBuffer(8 * KiB);
            try
            {
                await Task.WhenAll(writes.Select((w, i) => Task.Run(async () =>
                {
                    if (i == 0 && w.Data.Length <= aligned.Length)
                    {
                        // Page-aligned memory: an aligned request goes straight from the caller's buffer.
                        w.Data.CopyTo(aligned.GetSpan());
                        await image.WriteAsync(w.Offset, aligned.Memory[..w.Data.Length]);
                    }
                    else
                    {
                        await image.WriteAsync(w.Offset, w.Data);
                    }
                })));
            }
            finally
            {
                ((IDisposable)aligned).Dispose();
            }
            foreach (var (offset, data) in writes)
                data.CopyTo(model, offset);

            if (round % 5 == 4)
            {
                var offset = random.NextInt64(0, image.Size - 40 * KiB);
                var length = random.Next(1, 40 * KiB);
                if (random.Next(2) == 0 || !discardReadsZero)
                    await image.WriteZeroesAsync(offset, length, mayUnmap: random.Next(2) == 0);
                else
                    await image.DiscardAsync(offset, length);
                Array.Clear(model, (int)offset, length);
            }

            for (var check = 0; check < 8; check++)
            {
                var offset = random.NextInt64(start, start + window);
                var length = (int)Math.Min(random.Next(1, 20 * KiB), image.Size - offset);
                await AssertReadsAsync(image, model, offset, length);
            }
        }
        for (long offset = 0; offset < image.Size;)
        {
            var length = (int)Math.Min(MiB - 333, image.Size - offset);
            await AssertReadsAsync(image, model, offset, length);
            offset += length;
        }
        Assert.Equal(image.Size, model.LongLength);
    }

    private static async Task AssertReadsAsync(IBlockImage image, byte[] model, long offset, int length)
    {
        var read = new byte[length];
        Array.Fill(read, (byte)0xCC);
        await image.ReadAsync(offset, read);
        var expected = model.AsSpan((int)offset, length);
        var differs = read.AsSpan().CommonPrefixLength(expected);
        Assert.True(differs == length, $"[{offset}, +{length}) differs from the model at byte {offset + differs}");
    }

    private static int StatusFlags(RawFileImage image)
    {
        var added = false;
        image.Handle.DangerousAddRef(ref added);
        try
        {
            return LibC.fcntl((int)image.Handle.DangerousGetHandle(), LibC.F_GETFL, 0);
        }
        finally
        {
            image.Handle.DangerousRelease();
        }
    }

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        for (var i = 0; i < bytes.Length; i++)
            bytes[i] |= 1; // never zero, so a lost write cannot pass as a zeroed range
        return bytes;
    }
}
