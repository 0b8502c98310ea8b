using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Nbd;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A node connected to this service's own NBD export of the device is the device: a mirror into
/// it is a mirror into itself (issue 10, case 15: write-blocking, each guest write waited for
/// itself through the export and the whole service hung). The server recognises its own clients
/// by the connection, whatever the URI says.
/// </summary>
public sealed class MirrorIntoOwnExportTests : IAsyncLifetime
{
    public Task InitializeAsync() => Task.CompletedTask;

    private const long Size = 4L << 20;
    private readonly TempImageDirectory _dir = new();
    private BlockLayer? _layer;
    private NbdServer? _server;

    public async Task DisposeAsync()
    {
        if (_layer is not null)
        {
            foreach (var job in _layer.Jobs)
            {
                await _layer.CancelJobAsync(job.Id, force: true);
                await job.Concluded.WaitAsync(RecordingEventSink.Timeout);
            }
        }
        if (_server is not null)
            await _server.DisposeAsync();
        if (_layer is not null)
            await _layer.DisposeAsync();
        _dir.Dispose();
    }

    private async Task<BlockLayer> StartAsync(bool unix)
    {
        Directory.CreateDirectory(_dir.PathOf("root"));
        _layer = new BlockLayer(new ImageRoot(_dir.PathOf("root")), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System, new NbdRemoteImageOpener());
        await _layer.CreateNodeAsync(new NodeSpec("src", "raw", "src.img", null, Size, false));
        await _layer.CreateNodeAsync(new NodeSpec("other", "raw", "other.img", null, Size, false));
        await _layer.AddExportAsync("e0", "src", writable: true, []);
        await _layer.AddExportAsync("e1", "other", writable: true, []);
        _server = new NbdServer(_layer, new NbdServerOptions
        {
            Listen = unix ? NbdListenAddress.Unix(_dir.PathOf("nbd.sock")) : NbdListenAddress.Tcp("127.0.0.1", 0),
        });
        await _server.StartAsync();
        return _layer;
    }

    private string UriOf(string export) => _server!.LocalEndPoint switch
    {
        System.Net.IPEndPoint ip => $"nbd://127.0.0.1:{ip.Port}/{export}",
        _ => $"nbd+unix:///{export}?socket={_server.Options.Listen.SocketPath}",
    };

    [Theory]
    [InlineData(false, MirrorCopyMode.WriteBlocking)]
    [InlineData(false, MirrorCopyMode.Background)]
    [InlineData(true, MirrorCopyMode.WriteBlocking)]
    public async Task Mirror_into_the_services_own_export_of_the_device_is_a_mirror_into_itself(bool unix, MirrorCopyMode mode)
    {
        var layer = await StartAsync(unix);
        await layer.CreateNodeAsync(new NodeSpec("loop", "nbd", null, UriOf("e0"), null, false));

        var into = await Assert.ThrowsAsync<BlockException>(() => layer.StartMirrorAsync(new MirrorOptions { Device = "src", Target = "loop", CopyMode = mode }));
        Assert.Equal("mirror-into-itself", into.Code);
        Assert.Equal("Can't mirror node into itself: 'src' and 'loop' reach the same node 'src' through this service's NBD exports", into.Message);
        // The other way round: the device reads its target through the export.
        var from = await Assert.ThrowsAsync<BlockException>(() => layer.StartMirrorAsync(new MirrorOptions { Device = "loop", Target = "src", CopyMode = mode }));
        Assert.Equal("mirror-into-itself", from.Code);
        Assert.Empty(layer.Jobs);
        Assert.False(layer.GetNode("src").Busy);

        // A connection to the export of another node is an ordinary target.
        await layer.CreateNodeAsync(new NodeSpec("peer", "nbd", null, UriOf("e1"), null, false));
        await layer.StartMirrorAsync(new MirrorOptions { Id = "ok", Device = "src", Target = "peer", CopyMode = mode });
        Assert.True(layer.GetNode("src").Busy);
    }
}
