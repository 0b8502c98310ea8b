using BlockMirror.Core;
using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

/// <summary>The server through our own client, over real sockets, backed by a real raw file.</summary>
public sealed class NbdServerTests
{
    private const uint EPERM = 1;
    private const uint EINVAL = 22;
    private const uint ENOSPC = 28;
    private const uint ESHUTDOWN = 108;

    private static readonly NbdClientOptions WithBitmap = new() { MetaContexts = ["base:allocation", "qemu:dirty-bitmap:b0"] };

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Handshake_reports_size_flags_and_selected_contexts(bool unix)
    {
        await using var env = await NbdTestServer.StartAsync(unix);
        await using var client = await env.ConnectAsync(options: WithBitmap);

        Assert.Equal(NbdTestServer.DiskSize, client.Size);
        Assert.True(client.StructuredReplies);
        Assert.False(client.ReadOnly);
        Assert.True(client.CanFlush && client.CanFua && client.CanTrim && client.CanWriteZeroes && client.CanMultiConn);
        Assert.Equal(1u, client.MinimumBlockSize);
        Assert.Equal(4096u, client.PreferredBlockSize);
        Assert.Equal(32u * 1024 * 1024, client.MaximumBlockSize);
        Assert.Equal(["base:allocation", "qemu:dirty-bitmap:b0"], client.MetaContexts.Keys.Order(StringComparer.Ordinal));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Writes_reach_the_raw_file_and_read_back(bool unix)
    {
        await using var env = await NbdTestServer.StartAsync(unix);
        await using var client = await env.ConnectAsync();
        var a = Pattern(65536, 1);
        var b = Pattern(1000, 2); // unaligned on both ends
        await client.WriteAsync(0, a);
        await client.WriteAsync(123_457, b, fua: true);
        await client.FlushAsync();

        var back = new byte[65536];
        await client.ReadAsync(0, back);
        Assert.Equal(a, back);
        var backB = new byte[1000];
        await client.ReadAsync(123_457, backB);
        Assert.Equal(b, backB);

        // The bytes are in the file itself, where another reader sees them.
        await using var file = new FileStream(env.ImagePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var fromFile = new byte[1000];
        file.Position = 123_457;
        await file.ReadExactlyAsync(fromFile);
        Assert.Equal(b, fromFile);
    }

    [Fact]
    public async Task Many_requests_in_flight_on_one_connection_complete_correctly()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();
        const int blocks = 96;
        const int size = 65536;
        await Task.WhenAll(Enumerable.Range(0, blocks).Select(i => client.WriteAsync((long)i * size, Pattern(size, i)).AsTask()));
        var reads = Enumerable.Range(0, blocks).Select(async i =>
        {
            var buffer = new byte[size];
            await client.ReadAsync((long)i * size, buffer);
            return (i, buffer);
        });
        foreach (var (i, buffer) in await Task.WhenAll(reads))
            Assert.Equal(Pattern(size, i), buffer);
    }

    [Fact]
    public async Task Several_connections_write_concurrently()
    {
        await using var env = await NbdTestServer.StartAsync();
        var clients = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => env.ConnectAsync()));
        try
        {
            await Task.WhenAll(clients.Select((c, i) => c.WriteAsync(i * 1_048_576L, Pattern(1_048_576, 100 + i)).AsTask()));
            for (var i = 0; i < clients.Length; i++)
            {
                var buffer = new byte[1_048_576];
                await clients[(i + 1) % clients.Length].ReadAsync(i * 1_048_576L, buffer);
                Assert.Equal(Pattern(1_048_576, 100 + i), buffer);
            }
        }
        finally
        {
            foreach (var c in clients)
                await c.DisposeAsync();
        }
    }

    [Fact]
    public async Task Whole_disk_transfer_in_one_request()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();
        var all = Pattern((int)NbdTestServer.DiskSize, 7);
        await client.WriteAsync(0, all);
        var back = new byte[all.Length];
        await client.ReadAsync(0, back);
        Assert.Equal(all, back);
        Assert.Equal(NbdTestServer.DiskSize, env.Disk.FindBitmap("b0")!.Count);
    }

    [Fact]
    public async Task Base_allocation_reports_holes_and_data()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();

        var fresh = await client.BlockStatusAsync(0, NbdTestServer.DiskSize);
        var only = Assert.Single(fresh["base:allocation"]);
        Assert.Equal(new NbdExtent(0, NbdTestServer.DiskSize, 3), only); // HOLE | ZERO

        await client.WriteAsync(1_048_576, Pattern(65536, 3));
        var status = (await client.BlockStatusAsync(0, NbdTestServer.DiskSize))["base:allocation"];
        Assert.Equal(
            [new NbdExtent(0, 1_048_576, 3), new NbdExtent(1_048_576, 65536, 0), new NbdExtent(1_114_112, NbdTestServer.DiskSize - 1_114_112, 3)],
            status);

        var one = (await client.BlockStatusAsync(0, NbdTestServer.DiskSize, requestOne: true))["base:allocation"];
        Assert.Equal(new NbdExtent(0, 1_048_576, 3), Assert.Single(one));

        // A range inside the data extent: clipped to the request.
        var inner = (await client.BlockStatusAsync(1_048_576 + 100, 1000))["base:allocation"];
        Assert.Equal(new NbdExtent(1_048_676, 1000, 0), Assert.Single(inner));
    }

    [Fact]
    public async Task Dirty_bitmap_context_shows_exactly_the_written_granules()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync(options: WithBitmap);
        const int g = NbdTestServer.Granularity;

        await client.WriteAsync(g + 100, Pattern(10, 4)); // granule 1
        await client.WriteZeroesAsync(3L * 1024 * 1024, 2 * g, noHole: true); // granules 48-49
        await client.TrimAsync(7L * 1024 * 1024 + 1, 1); // granule 112

        var status = await client.BlockStatusAsync(0, NbdTestServer.DiskSize);
        var bitmap = status["qemu:dirty-bitmap:b0"];
        var expected = new List<NbdExtent>
        {
            new(0, g, 0),
            new(g, g, 1),
            new(2 * g, (3L * 1024 * 1024) - (2 * g), 0),
            new(3L * 1024 * 1024, 2 * g, 1),
            new((3L * 1024 * 1024) + (2 * g), (7L * 1024 * 1024) - (3L * 1024 * 1024) - (2 * g), 0),
            new(7L * 1024 * 1024, g, 1),
            new((7L * 1024 * 1024) + g, NbdTestServer.DiskSize - (7L * 1024 * 1024) - g, 0),
        };
        Assert.Equal(expected, bitmap);
        Assert.Equal(
            env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize),
            bitmap.Where(e => e.Flags == 1).Select(e => (e.Offset, e.Length)));
        Assert.True(status.ContainsKey("base:allocation"));

        // Unaligned request: extents start at the request, end at its end.
        var part = (await client.BlockStatusAsync(g + 4096, 3 * g))["qemu:dirty-bitmap:b0"];
        Assert.Equal([new NbdExtent(g + 4096, g - 4096, 1), new NbdExtent(2 * g, (2 * g) + 4096, 0)], part);

        var one = (await client.BlockStatusAsync(0, NbdTestServer.DiskSize, requestOne: true))["qemu:dirty-bitmap:b0"];
        Assert.Equal(new NbdExtent(0, g, 0), Assert.Single(one));
    }

    [Fact]
    public async Task Write_zeroes_and_trim_clear_the_data()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();
        await client.WriteAsync(0, Pattern(262_144, 5));
        await client.WriteZeroesAsync(0, 65536);
        await client.WriteZeroesAsync(65536, 65536, noHole: true, fua: true);
        await client.TrimAsync(131_072, 65536);
        var back = new byte[196_608];
        await client.ReadAsync(0, back);
        Assert.All(back, b => Assert.Equal(0, b));
        var rest = new byte[65536];
        await client.ReadAsync(196_608, rest);
        Assert.Equal(Pattern(262_144, 5).AsSpan(196_608).ToArray(), rest);
    }

    [Fact]
    public async Task Read_only_export_refuses_every_write_with_EPERM()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync("disk0-ro");
        Assert.True(client.ReadOnly);
        Assert.False(client.CanTrim);

        var write = await Assert.ThrowsAsync<NbdException>(() => client.WriteAsync(0, new byte[512]).AsTask());
        Assert.Equal(EPERM, write.Errno);
        Assert.Equal(EPERM, (await Assert.ThrowsAsync<NbdException>(() => client.WriteZeroesAsync(0, 512).AsTask())).Errno);
        Assert.Equal(EPERM, (await Assert.ThrowsAsync<NbdException>(() => client.TrimAsync(0, 512).AsTask())).Errno);
        Assert.Equal(0, env.Disk.FindBitmap("b0")!.Count);

        // Reads still work on the same connection.
        await client.ReadAsync(0, new byte[4096]);
    }

    [Fact]
    public async Task Out_of_range_requests_fail_with_the_spec_errors_and_the_connection_survives()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();
        const long size = NbdTestServer.DiskSize;

        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.ReadAsync(size - 100, new byte[4096]).AsTask())).Errno);
        Assert.Equal(ENOSPC, (await Assert.ThrowsAsync<NbdException>(() => client.WriteAsync(size - 100, new byte[4096]).AsTask())).Errno);
        Assert.Equal(ENOSPC, (await Assert.ThrowsAsync<NbdException>(() => client.WriteZeroesAsync(size, 1).AsTask())).Errno);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.TrimAsync(size + 1, 1).AsTask())).Errno);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.BlockStatusAsync(size, 1).AsTask())).Errno);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(0, 0, ulong.MaxValue - 10, 100, default, new byte[100]).AsTask())).Errno);
        Assert.Equal(0, env.Disk.FindBitmap("b0")!.Count);

        var last = Pattern(100, 9);
        await client.WriteAsync(size - 100, last);
        var back = new byte[100];
        await client.ReadAsync(size - 100, back);
        Assert.Equal(last, back);
    }

    [Fact]
    public async Task Unknown_commands_flags_and_oversized_requests_are_EINVAL()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();

        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(99, 0, 0, 0, default, default).AsTask())).Errno);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(0, 0x40, 0, 512, default, new byte[512]).AsTask())).Errno);
        // CACHE is not advertised.
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(5, 0, 0, 512, default, default).AsTask())).Errno);
        // Block status with a zero length.
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(7, 0, 0, 0, default, default).AsTask())).Errno);

        // A write over 32 MiB: its payload is skipped, the request refused, the stream stays framed.
        var huge = new byte[(32 * 1024 * 1024) + 4096];
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(1, 0, 0, (uint)huge.Length, huge, default).AsTask())).Errno);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.RawAsync(0, 0, 0, (uint)huge.Length, default, huge).AsTask())).Errno);
        Assert.Equal(0, env.Disk.FindBitmap("b0")!.Count);

        var data = Pattern(4096, 10);
        await client.WriteAsync(0, data);
        var back = new byte[4096];
        await client.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Block_status_without_contexts_is_EINVAL()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync(options: new NbdClientOptions { MetaContexts = [] });
        Assert.Empty(client.MetaContexts);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.BlockStatusAsync(0, 4096).AsTask())).Errno);
    }

    [Fact]
    public async Task Simple_replies_work_when_structured_replies_are_not_negotiated()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync(options: new NbdClientOptions { StructuredReplies = false });
        Assert.False(client.StructuredReplies);
        Assert.Empty(client.MetaContexts);
        var data = Pattern(70_000, 11);
        await client.WriteAsync(5, data);
        var back = new byte[70_000];
        await client.ReadAsync(5, back);
        Assert.Equal(data, back);
        Assert.Equal(EINVAL, (await Assert.ThrowsAsync<NbdException>(() => client.ReadAsync(NbdTestServer.DiskSize, new byte[1]).AsTask())).Errno);
        // The connection is still framed after the error (no data followed it).
        await client.ReadAsync(5, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Sparse_reads_return_zeroes_for_holes_and_data_elsewhere()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync();
        var data = Pattern(8192, 12);
        await client.WriteAsync(1_048_576, data);
        var back = new byte[3 * 1_048_576];
        back.AsSpan().Fill(0xEE); // holes must overwrite this
        await client.ReadAsync(0, back);
        Assert.All(back.AsSpan(0, 1_048_576).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data, back.AsSpan(1_048_576, 8192).ToArray());
        Assert.All(back.AsSpan(1_048_576 + 8192).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task Unknown_export_and_refused_connection_fail_with_nbd_connect_failed()
    {
        await using var env = await NbdTestServer.StartAsync();
        var missing = await Assert.ThrowsAsync<BlockException>(() => env.ConnectAsync("nope"));
        Assert.Equal("nbd-connect-failed", missing.Code);
        Assert.Contains("nope", missing.Message, StringComparison.Ordinal);

        var port = ((System.Net.IPEndPoint)env.Server.LocalEndPoint).Port;
        await env.Server.StopAsync();
        var refused = await Assert.ThrowsAsync<BlockException>(() => NbdClient.ConnectAsync(NbdUri.Parse($"nbd://127.0.0.1:{port}/disk0")));
        Assert.Equal("nbd-connect-failed", refused.Code);
    }

    [Fact]
    public async Task Removing_an_export_disconnects_its_clients_and_spares_others()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var victim = await env.ConnectAsync("disk0-ro");
        await using var other = await env.ConnectAsync("disk0");
        await victim.ReadAsync(0, new byte[512]);

        await env.Layer.RemoveExportAsync("disk0-ro");
        Assert.Equal(1, env.Server.DisconnectExport("disk0-ro"));

        // The close is graceful (BeginClose): a request the connection still takes is answered
        // ESHUTDOWN (the export is gone) before the cut, so a request may fail with that reply
        // first; the connection then ends, and no request is ever served.
        var failure = await Assert.ThrowsAnyAsync<IOException>(() => victim.ReadAsync(0, new byte[512]).AsTask());
        for (var i = 0; i < 8 && failure is NbdException; i++)
        {
            Assert.Equal(ESHUTDOWN, ((NbdException)failure).Errno);
            failure = await Assert.ThrowsAnyAsync<IOException>(() => victim.ReadAsync(0, new byte[512]).AsTask());
        }
        Assert.IsNotType<NbdException>(failure);
        Assert.True(victim.IsClosed);
        await other.WriteAsync(0, new byte[512]);
        await Assert.ThrowsAsync<BlockException>(() => env.ConnectAsync("disk0-ro"));
    }

    [Fact]
    public async Task An_export_removed_without_disconnect_answers_ESHUTDOWN_then_closes()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var client = await env.ConnectAsync("disk0-ro");
        await env.Layer.RemoveExportAsync("disk0-ro");
        var e = await Assert.ThrowsAnyAsync<IOException>(() => client.ReadAsync(0, new byte[512]).AsTask());
        if (e is NbdException nbd)
            Assert.Equal(ESHUTDOWN, nbd.Errno);
        await Assert.ThrowsAnyAsync<IOException>(() => client.ReadAsync(0, new byte[512]).AsTask());
    }

    [Fact]
    public async Task Stopping_the_server_closes_connections_cleanly()
    {
        var env = await NbdTestServer.StartAsync(unix: true);
        var socketPath = env.Server.Options.Listen.SocketPath!;
        await using var client = await env.ConnectAsync();
        await client.WriteAsync(0, new byte[4096]);
        await env.Server.StopAsync();
        Assert.Equal(0, env.Server.ConnectionCount);
        Assert.False(File.Exists(socketPath));
        await Assert.ThrowsAnyAsync<IOException>(() => client.ReadAsync(0, new byte[512]).AsTask());
        await env.DisposeAsync();
    }

    [Fact]
    public async Task A_stale_unix_socket_file_is_replaced_at_start()
    {
        await using var first = await NbdTestServer.StartAsync(unix: true);
        var path = first.Server.Options.Listen.SocketPath!;
        // Simulate a killed process: a socket file nobody listens on.
        using (var stale = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            // .NET unlinks a bound socket's file when the socket is closed; a rename keeps the inode away from that.
            var boundPath = Path.Combine(first.Directory, "bound.sock");
            var stalePath = Path.Combine(first.Directory, "stale.sock");
            stale.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(boundPath));
            File.Move(boundPath, stalePath);
            stale.Close();
            Assert.True(File.Exists(stalePath));
            await using var server = new NbdServer(first.Layer, new NbdServerOptions { Listen = NbdListenAddress.Unix(stalePath) });
            await server.StartAsync();
            await using var client = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd+unix:///disk0?socket={stalePath}"));
            Assert.Equal(NbdTestServer.DiskSize, client.Size);
        }
        // A live socket is never stolen: binding the first server's path again fails.
        await using var second = new NbdServer(first.Layer, new NbdServerOptions { Listen = NbdListenAddress.Unix(path) });
        await Assert.ThrowsAnyAsync<System.Net.Sockets.SocketException>(() => second.StartAsync());
    }

    [Fact]
    public async Task A_second_server_cannot_listen_on_the_port_of_a_live_one()
    {
        // SO_REUSEPORT (what .NET's ReuseAddress also sets on Linux) let both bind, and the kernel then
        // spread clients over the two: a client could reach the other server's export of the same name.
        await using var first = await NbdTestServer.StartAsync();
        var port = ((System.Net.IPEndPoint)first.Server.LocalEndPoint).Port;
        await using var second = new NbdServer(first.Layer, new NbdServerOptions { Listen = NbdListenAddress.Tcp("127.0.0.1", port) });
        var refused = await Assert.ThrowsAnyAsync<System.Net.Sockets.SocketException>(() => second.StartAsync());
        Assert.Equal(System.Net.Sockets.SocketError.AddressAlreadyInUse, refused.SocketErrorCode);
        await using var client = await first.ConnectAsync();
        Assert.Equal(NbdTestServer.DiskSize, client.Size);
    }

    [Fact]
    public async Task A_restarted_server_rebinds_its_port_while_old_connections_are_in_time_wait()
    {
        var first = await NbdTestServer.StartAsync();
        var port = ((System.Net.IPEndPoint)first.Server.LocalEndPoint).Port;
        var client = await first.ConnectAsync();
        // The server closes first, so its side of the connection is the one left in TIME_WAIT.
        await first.Server.StopAsync();
        await client.DisposeAsync();
        await using var again = new NbdServer(first.Layer, new NbdServerOptions { Listen = NbdListenAddress.Tcp("127.0.0.1", port) });
        await again.StartAsync();
        await using var reconnected = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd://127.0.0.1:{port}/disk0"));
        Assert.Equal(NbdTestServer.DiskSize, reconnected.Size);
        await again.DisposeAsync();
        await first.DisposeAsync();
    }

    [Fact]
    public async Task A_unix_client_bound_to_a_longer_address_than_the_listeners_does_not_stop_the_server()
    {
        await using var env = await NbdTestServer.StartAsync(unix: true);
        // A client may bind its own socket to any name; .NET's accept copies the peer's address into a
        // buffer sized for the listener's, and threw ArgumentException ("Destination is too short"),
        // which ended the accept loop: the server stopped taking clients for good.
        var longName = env.TempPath(new string('c', 100 - env.TempPath("").Length));
        using (var odd = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            odd.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(longName));
            await odd.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(env.Server.Options.Listen.SocketPath!));
            await using var during = await env.ConnectAsync();
            Assert.Equal(NbdTestServer.DiskSize, during.Size);
        }
        await using var after = await env.ConnectAsync();
        Assert.Equal(NbdTestServer.DiskSize, after.Size);
    }
}
