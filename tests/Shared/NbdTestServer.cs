using BlockMirror.Core;
using System.Collections.Concurrent;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;
using BlockMirror.Nbd;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// A block layer in a temp directory with a raw node <c>disk0</c> (bitmap <c>b0</c> at 64 KiB),
/// a writable export <c>disk0</c> carrying <c>b0</c>, a read-only export <c>disk0-ro</c>, and an
/// NBD server serving them on 127.0.0.1:0 or a Unix socket.
/// </summary>
internal sealed class NbdTestServer : IAsyncDisposable
{
    public const long DiskSize = 8L * 1024 * 1024;
    public const int Granularity = 64 * 1024;

    private NbdTestServer(string directory, BlockLayer layer, NbdServer server, ConcurrentQueue<string> log)
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

    /// <param name="refused">Called with each line the server logs about a client it refused for TLS.</param>
    public static async Task<NbdTestServer> StartAsync(bool unix = false, Action<NbdServerOptions>? configure = null, long diskSize = DiskSize, Action<string>? refused = null)
    {
        var directory = Path.Combine(Path.GetTempPath(), "bm-nbd-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(directory);
        var layer = new BlockLayer(new ImageRoot(Path.Combine(directory, "images")), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System);
        await layer.CreateNodeAsync(new NodeSpec("disk0", "raw", "disk0.img", null, diskSize, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "b0", Granularity, persistent: false, disabled: false));
        await layer.AddExportAsync("disk0", "disk0", writable: true, ["b0"]);
        await layer.AddExportAsync("disk0-ro", "disk0", writable: false, []);

        var log = new ConcurrentQueue<string>();
        var options = new NbdServerOptions
        {
            Listen = unix ? NbdListenAddress.Unix(Path.Combine(directory, "nbd.sock")) : NbdListenAddress.Tcp("127.0.0.1", 0),
        };
        configure?.Invoke(options);
        var logger = new CapturingLogger<NbdServer>((id, line) =>
        {
            log.Enqueue(line);
            if (id.Id == 3) // NbdServerLog.RefusedEventId
                refused?.Invoke(line);
        });
        var server = new NbdServer(layer, options, logger);
        await server.StartAsync();
        return new NbdTestServer(directory, layer, server, log);
    }

    /// <summary>A path for a scratch file in the server's directory (removed with it).</summary>
    public string TempPath(string name) => Path.Combine(Directory, name);

    /// <summary>The URI of an export on this server.</summary>
    public string UriOf(string export = "disk0") => Server.LocalEndPoint switch
    {
        System.Net.IPEndPoint ip => $"nbd://127.0.0.1:{ip.Port}/{export}",
        _ => $"nbd+unix:///{export}?socket={Server.Options.Listen.SocketPath}",
    };

    public Task<NbdClient> ConnectAsync(string export = "disk0", NbdClientOptions? options = null) =>
        NbdClient.ConnectAsync(NbdUri.Parse(UriOf(export)), options);

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        // Client misbehaviour is logged and survived; an unexpected exception is a server bug.
        Assert.DoesNotContain(Log, line => line.Contains("unexpectedly", StringComparison.Ordinal));
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
