using System.Collections.Concurrent;
using System.Net;
using BlockMirror.Core;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;
using BlockMirror.Nbd;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>
/// Our NBD server over a real raw file: node <c>disk0</c> (16 MiB, bitmap <c>b0</c> at 64 KiB)
/// exported writable as <c>disk0</c> with <c>b0</c>, on 127.0.0.1:0 or a Unix socket.
/// </summary>
internal sealed class InteropNbdServer : IAsyncDisposable
{
    public const long DiskSize = 16L * 1024 * 1024;
    public const int Granularity = 64 * 1024;

    private InteropNbdServer(string directory, BlockLayer layer, NbdServer server, ConcurrentQueue<string> log)
    {
        Directory = directory;
        Layer = layer;
        Server = server;
        Log = log;
    }

    public string Directory { get; }

    public BlockLayer Layer { get; }

    public NbdServer Server { get; }

    public ConcurrentQueue<string> Log { get; }

    public BlockNode Disk => Layer.GetNode("disk0");

    public string ImagePath => Path.Combine(Directory, "images", "disk0.img");

    public static async Task<InteropNbdServer> StartAsync(bool unix = false)
    {
        var directory = Path.Combine(Path.GetTempPath(), "bm-nbd-interop-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(directory);
        var layer = new BlockLayer(new ImageRoot(Path.Combine(directory, "images")), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System);
        await layer.CreateNodeAsync(new NodeSpec("disk0", "raw", "disk0.img", null, DiskSize, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "b0", Granularity, persistent: false, disabled: false));
        await layer.AddExportAsync("disk0", "disk0", writable: true, ["b0"]);
        var log = new ConcurrentQueue<string>();
        var server = new NbdServer(layer, new NbdServerOptions
        {
            Listen = unix ? NbdListenAddress.Unix(Path.Combine(directory, "nbd.sock")) : NbdListenAddress.Tcp("127.0.0.1", 0),
            Log = log.Enqueue,
        });
        await server.StartAsync();
        return new InteropNbdServer(directory, layer, server, log);
    }

    public string Uri(string export = "disk0") => Server.LocalEndPoint switch
    {
        IPEndPoint ip => $"nbd://127.0.0.1:{ip.Port}/{export}",
        _ => $"nbd+unix:///{export}?socket={Server.Options.Listen.SocketPath}",
    };

    public string TempPath(string name) => Path.Combine(Directory, name);

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        await Layer.DisposeAsync();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
