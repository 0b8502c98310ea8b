using BlockMirror.Core;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

/// <summary>The nbd driver (<see cref="NbdImage"/>) and its opener, against our own server.</summary>
public sealed class NbdImageTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Image_reads_writes_zeroes_discards_and_reports_status(bool unix)
    {
        await using var env = await NbdTestServer.StartAsync(unix);
        await using var image = await NbdImage.OpenAsync(env.UriOf("disk0"), readOnly: false);
        Assert.Equal(NbdTestServer.DiskSize, image.Size);
        Assert.False(image.ReadOnly);
        Assert.False(image.HasZeroInit);
        Assert.Equal(env.UriOf("disk0"), image.Location);

        Assert.Equal(new ImageExtent(0, NbdTestServer.DiskSize, ExtentKind.Zero), await image.GetBlockStatusAsync(0, NbdTestServer.DiskSize));
        var data = new byte[3 * 65536];
        new Random(1).NextBytes(data);
        await image.WriteAsync(65536, data, fua: true);
        Assert.Equal(new ImageExtent(0, 65536, ExtentKind.Zero), await image.GetBlockStatusAsync(0, NbdTestServer.DiskSize));
        Assert.Equal(new ImageExtent(65536, 3 * 65536, ExtentKind.Data), await image.GetBlockStatusAsync(65536, NbdTestServer.DiskSize - 65536));

        await image.WriteZeroesAsync(65536, 65536, mayUnmap: false);
        await image.DiscardAsync(131072, 65536);
        await image.FlushAsync();
        var back = new byte[3 * 65536];
        await image.ReadAsync(65536, back);
        Assert.All(back.AsSpan(0, 131072).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data.AsSpan(131072).ToArray(), back.AsSpan(131072).ToArray());

        // Every one of those went through the exported node's write path.
        Assert.Equal([(65536L, 3L * 65536)], env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize));
    }

    [Fact]
    public async Task A_read_only_image_refuses_writes_locally()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var image = await NbdImage.OpenAsync(env.UriOf("disk0-ro"), readOnly: false);
        Assert.True(image.ReadOnly); // the export says so
        await Assert.ThrowsAsync<NbdException>(() => image.WriteAsync(0, new byte[1]).AsTask());
        await image.ReadAsync(0, new byte[4096]);
    }

    [Fact]
    public async Task Nbd_node_in_another_layer_writes_through_the_export()
    {
        await using var env = await NbdTestServer.StartAsync();
        var root = Path.Combine(env.Directory, "other");
        await using var layer = new BlockLayer(new ImageRoot(root), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System, new NbdRemoteImageOpener());
        var remote = await layer.CreateNodeAsync(new NodeSpec("remote", "nbd", null, env.UriOf("disk0"), null, false));
        Assert.Equal(NbdTestServer.DiskSize, remote.Size);
        Assert.Equal("nbd", remote.Driver);

        var data = new byte[4096];
        data.AsSpan().Fill(0xA5);
        await remote.WriteAsync(2 * 1024 * 1024, data);
        var back = new byte[4096];
        await env.Disk.ReadAsync(2 * 1024 * 1024, back);
        Assert.Equal(data, back);
        Assert.Equal([(2L * 1024 * 1024, (long)NbdTestServer.Granularity)], env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize));

        var badUri = await Assert.ThrowsAsync<BlockException>(() => layer.CreateNodeAsync(new NodeSpec("bad", "nbd", null, "nbd:/x", null, false)));
        Assert.Equal("invalid-uri", badUri.Code);
        var missing = await Assert.ThrowsAsync<BlockException>(() => layer.CreateNodeAsync(new NodeSpec("missing", "nbd", null, env.UriOf("nope"), null, false)));
        Assert.Equal("nbd-connect-failed", missing.Code);
    }
}
