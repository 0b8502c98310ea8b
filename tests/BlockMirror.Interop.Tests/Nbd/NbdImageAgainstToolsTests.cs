using BlockMirror.Core.Images;
using BlockMirror.Nbd;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>Our client (the nbd driver) against real NBD servers: qemu-nbd and nbdkit.</summary>
public sealed class NbdImageAgainstToolsTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "bm-nbd-client-" + Guid.NewGuid().ToString("N")[..12]);

    public NbdImageAgainstToolsTests() => Directory.CreateDirectory(_directory);

    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static async Task RoundTripsAsync(NbdImage image)
    {
        Assert.False(image.ReadOnly);
        var data = new byte[200_000];
        new Random(42).NextBytes(data);
        await image.WriteAsync(1_048_576 + 7, data);
        await image.FlushAsync();
        var back = new byte[data.Length];
        await image.ReadAsync(1_048_576 + 7, back);
        Assert.Equal(data, back);

        // A large request, split by the client into several in flight.
        var big = new byte[40 * 1024 * 1024];
        new Random(43).NextBytes(big);
        await image.WriteAsync(4 * 1024 * 1024, big, fua: true);
        var bigBack = new byte[big.Length];
        await image.ReadAsync(4 * 1024 * 1024, bigBack);
        Assert.True(big.AsSpan().SequenceEqual(bigBack));

        // Zeroes: read back as zero and reported as a zero extent.
        await image.WriteZeroesAsync(4 * 1024 * 1024, 1024 * 1024, mayUnmap: true);
        var zeroes = new byte[1024 * 1024];
        await image.ReadAsync(4 * 1024 * 1024, zeroes);
        Assert.All(zeroes, b => Assert.Equal(0, b));
        var status = await image.GetBlockStatusAsync(4 * 1024 * 1024, 1024 * 1024);
        Assert.Equal(ExtentKind.Zero, status.Kind);
        Assert.Equal(4 * 1024 * 1024, status.Offset);

        var data1 = await image.GetBlockStatusAsync(1_048_576 + 4096, 65536);
        Assert.Equal(ExtentKind.Data, data1.Kind);

        // Untouched space at the end is zero (a hole in both servers).
        var tail = await image.GetBlockStatusAsync(image.Size - 65536, 65536);
        Assert.Equal(new ImageExtent(image.Size - 65536, 65536, ExtentKind.Zero), tail);

        await image.DiscardAsync(1_048_576, 1_048_576);
        await image.FlushAsync();
    }

    [NbdInteropFact("qemu-nbd")]
    public async Task Nbd_image_round_trips_against_qemu_nbd()
    {
        var file = Path.Combine(_directory, "q.img");
        await using (var f = new FileStream(file, FileMode.CreateNew))
            f.SetLength(64L * 1024 * 1024);
        var socket = Path.Combine(_directory, "q.sock");
        await using var server = await BackgroundTool.StartAsync("qemu-nbd", socket, "-f", "raw", "-t", "-e", "4", "-x", "exp", $"--socket={socket}", file);
        await using var image = await NbdImage.OpenAsync($"nbd+unix:///exp?socket={socket}", readOnly: false);
        Assert.Equal(64L * 1024 * 1024, image.Size);
        Assert.True(image.Client.StructuredReplies);
        Assert.Contains("base:allocation", image.Client.MetaContexts.Keys);
        await RoundTripsAsync(image);

        var missing = await Assert.ThrowsAsync<BlockMirror.Core.BlockException>(() => NbdImage.OpenAsync($"nbd+unix:///nope?socket={socket}", readOnly: false));
        Assert.Equal("nbd-connect-failed", missing.Code);
    }

    [NbdInteropFact("nbdkit")]
    public async Task Nbd_image_round_trips_against_nbdkit_memory()
    {
        var socket = Path.Combine(_directory, "k.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "memory", "64M");
        await using var image = await NbdImage.OpenAsync($"nbd+unix:///?socket={socket}", readOnly: false);
        Assert.Equal(64L * 1024 * 1024, image.Size);
        Assert.True(image.Client.CanMultiConn);
        await RoundTripsAsync(image);
    }

    [NbdInteropFact("nbdkit")]
    public async Task Nbd_image_sees_a_read_only_nbdkit_export_as_read_only()
    {
        var socket = Path.Combine(_directory, "r.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-r", "-U", socket, "pattern", "1M");
        await using var image = await NbdImage.OpenAsync($"nbd+unix:///?socket={socket}", readOnly: false);
        Assert.True(image.ReadOnly);
        var block = new byte[16];
        await image.ReadAsync(8, block);
        // nbdkit's pattern plugin: every 8-byte word is its own big-endian offset.
        Assert.Equal(8ul, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(block));
        Assert.Equal(16ul, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(block.AsSpan(8)));
        await Assert.ThrowsAsync<NbdException>(() => image.WriteAsync(0, new byte[8]).AsTask());
    }
}
