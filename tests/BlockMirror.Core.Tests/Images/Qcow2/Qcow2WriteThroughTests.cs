using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// <see cref="Qcow2Image.MetadataWriteThrough"/>: what the file holds while the image is still open
/// (what a kill -9 of the process leaves) already maps every acknowledged write, zero write and discard.
/// </summary>
public sealed class Qcow2WriteThroughTests
{
    private const long Size = 8L << 20;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task The_file_of_an_open_image_maps_what_was_acknowledged_only_with_write_through(bool writeThrough)
    {
        using var dir = new TempImageDirectory();
        var data = new byte[100_000];
        new Random(4).NextBytes(data);
        await using (var image = Qcow2Image.Create(dir.PathOf("a.qcow2"), Size))
        {
            image.MetadataWriteThrough = writeThrough;
            await image.WriteAsync(3_000_000, data);
            await image.WriteAsync(6_000_000, data);
            await image.WriteZeroesAsync(6_000_000 / 65536 * 65536, 65536, mayUnmap: true);
            // The file as a killed process leaves it: its pages, without the image's caches.
            File.Copy(dir.PathOf("a.qcow2"), dir.PathOf("killed.qcow2"));
        }
        await using var left = Qcow2Image.Open(dir.PathOf("killed.qcow2"), readOnly: true);
        var back = new byte[data.Length];
        await left.ReadAsync(3_000_000, back);
        if (writeThrough)
        {
            Assert.Equal(data, back);
            var zeroed = new byte[65536];
            await left.ReadAsync(6_000_000 / 65536 * 65536, zeroed);
            Assert.All(zeroed, b => Assert.Equal(0, b));
        }
        else
        {
            // QEMU's cache=writeback: the mapping is still in the cache, the copy reads zeroes there.
            Assert.All(back, b => Assert.Equal(0, b));
        }
    }
}
