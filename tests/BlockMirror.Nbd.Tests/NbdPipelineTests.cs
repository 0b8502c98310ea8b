using System.Buffers.Binary;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The transmission path under pipelining, byte by byte: requests sent back to back in one write,
/// replies that come in any order and share sends, requests whose bytes arrive in pieces, more
/// requests than the connection takes at once, a client gone mid-burst, a client that stops reading.
/// </summary>
public sealed class NbdPipelineTests
{
    private const ushort CmdRead = 0;
    private const ushort CmdWrite = 1;
    private const ushort CmdFlush = 3;
    private const ushort ReplyDone = 1;
    private const ushort ChunkData = 1;
    private const ushort ChunkHole = 2;

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>A bounded poll of a state the server reaches on its own threads.</summary>
    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting until {what}");
            await Task.Delay(5);
        }
    }

    private static async Task<byte[]> ReadDiskAsync(NbdTestServer env, long offset, int length)
    {
        var data = new byte[length];
        await env.Disk.ReadAsync(offset, data);
        return data;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_burst_of_requests_in_one_write_is_answered_once_per_cookie(bool unix)
    {
        const int blocks = 32;
        const int size = 4096;
        await using var env = await NbdTestServer.StartAsync(unix);
        await using (var client = await env.ConnectAsync())
        {
            for (var i = 0; i < blocks; i++)
                await client.WriteAsync(i * size, Pattern(size, i));
        }
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);

        // One write: reads of blocks 0-31 interleaved with writes of blocks 32-63, then a flush.
        var burst = new List<byte>();
        for (var i = 0; i < blocks; i++)
        {
            burst.AddRange(NbdRawConnection.Request(0, CmdRead, cookie: (ulong)(1000 + i), offset: (ulong)(i * size), length: size));
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)(2000 + i), offset: (ulong)((blocks + i) * size), length: size, Pattern(size, 100 + i)));
        }
        burst.AddRange(NbdRawConnection.Request(0, CmdFlush, cookie: 3000, offset: 0, length: 0));
        await raw.WriteAsync([.. burst]);

        var answered = new List<ulong>();
        for (var n = 0; n < (2 * blocks) + 1; n++)
        {
            var (error, cookie) = await raw.ReadSimpleReplyAsync();
            Assert.Equal(0u, error);
            answered.Add(cookie);
            if (cookie is >= 1000 and < 1000 + blocks)
                Assert.Equal(Pattern(size, (int)cookie - 1000), await raw.ReadAsync(size)); // a read's data follows its reply
        }
        var expected = Enumerable.Range(0, blocks).SelectMany(i => new[] { (ulong)(1000 + i), (ulong)(2000 + i) }).Append(3000ul);
        Assert.Equal(expected.Order(), answered.Order());
        for (var i = 0; i < blocks; i++)
            Assert.Equal(Pattern(size, 100 + i), await ReadDiskAsync(env, (blocks + i) * size, size));
    }

    [Fact]
    public async Task A_write_waiting_at_the_node_does_not_hold_up_the_replies_behind_it()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);
        var data = Pattern(4096, 7);

        var quiesced = await env.Disk.QuiesceGate.QuiesceAsync();
        try
        {
            await raw.WriteAsync([
                .. NbdRawConnection.Request(0, CmdWrite, cookie: 1, offset: 0, length: 4096, data),
                .. NbdRawConnection.Request(0, CmdRead, cookie: 2, offset: 65536, length: 512),
            ]);
            // The write waits at the quiesced node; the read behind it is answered meanwhile.
            Assert.Equal((0u, 2ul), await raw.ReadSimpleReplyAsync());
            Assert.Equal(new byte[512], await raw.ReadAsync(512));
        }
        finally
        {
            quiesced.Dispose();
        }
        Assert.Equal((0u, 1ul), await raw.ReadSimpleReplyAsync());
        Assert.Equal(data, await ReadDiskAsync(env, 0, 4096));
    }

    [Fact]
    public async Task After_a_disconnect_request_a_write_still_waiting_replies_before_the_connection_closes()
    {
        const ushort CmdDisc = 2;
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);
        var data = Pattern(4096, 8);

        var quiesced = await env.Disk.QuiesceGate.QuiesceAsync();
        await raw.WriteAsync([
            .. NbdRawConnection.Request(0, CmdWrite, cookie: 1, offset: 0, length: 4096, data),
            .. NbdRawConnection.Request(0, CmdDisc, cookie: 2, offset: 0, length: 0),
        ]);
        // The write finishes on the thread pool once the node resumes; its reply goes out through
        // the connection's sender thread, and only then is the socket shut.
        quiesced.Dispose();
        Assert.Equal((0u, 1ul), await raw.ReadSimpleReplyAsync());
        Assert.True(await raw.IsClosedByServerAsync());
        Assert.Equal(data, await ReadDiskAsync(env, 0, 4096));
    }

    [Fact]
    public async Task Replies_to_a_burst_share_sends()
    {
        const int count = 32;
        await using var env = await NbdTestServer.StartAsync(unix: true);
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);

        var burst = new List<byte>();
        for (var i = 0; i < count; i++)
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)i, offset: (ulong)(i * 65536), length: 512, Pattern(512, i)));
        await raw.WriteAsync([.. burst]);
        var answered = new List<ulong>();
        for (var i = 0; i < count; i++)
            answered.Add((await raw.ReadSimpleReplyAsync()).Cookie);

        Assert.Equal(Enumerable.Range(0, count).Select(i => (ulong)i), answered.Order());
        var replies = Assert.Single(env.Server.OpenConnections).Replies;
        Assert.Equal(count, replies.Replies);
        Assert.True(replies.Sends < count, $"{replies.Sends} sends for {count} replies: none was coalesced");
    }

    [Theory]
    [InlineData(4096)]
    [InlineData(1024 * 1024)]
    public async Task A_request_whose_bytes_arrive_in_pieces_is_applied_whole(int size)
    {
        await using var env = await NbdTestServer.StartAsync(unix: true);
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);
        var data = Pattern(size, 11);
        var request = NbdRawConnection.Request(0, CmdWrite, cookie: 5, offset: 65536, length: (uint)size, data);

        // Cut inside the header, just after it, and twice inside the payload; each piece is read by
        // the server before the next is sent.
        int[] cuts = [13, 29, 28 + (size / 3), 28 + (size / 2) + 7, request.Length];
        var from = 0;
        foreach (var cut in cuts)
        {
            await raw.WriteAsync(request[from..cut]);
            await raw.WaitUntilServerReadAllAsync();
            from = cut;
        }

        Assert.Equal((0u, 5ul), await raw.ReadSimpleReplyAsync());
        Assert.Equal(data, await ReadDiskAsync(env, 65536, size));
        var granule = NbdTestServer.Granularity;
        Assert.Equal([(65536L, (long)((size + granule - 1) / granule * granule))], env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize));
    }

    [Fact]
    public async Task A_small_structured_read_answers_holes_as_holes_and_written_zeroes_as_data()
    {
        await using var env = await NbdTestServer.StartAsync();
        var data = Pattern(4096, 3);
        await using (var client = await env.ConnectAsync())
        {
            await client.WriteAsync(65536, data);
            await client.WriteAsync(131072, new byte[4096]); // zero bytes, but written: data
        }
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: true);

        // A hole: one hole chunk.
        await raw.SendRequestAsync(0, CmdRead, cookie: 1, offset: 1 << 20, length: 4096);
        var hole = await raw.ReadChunkAsync();
        Assert.Equal((ReplyDone, ChunkHole, 1ul), (hole.Flags, hole.Type, hole.Cookie));
        Assert.Equal(1ul << 20, BinaryPrimitives.ReadUInt64BigEndian(hole.Payload));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(hole.Payload.AsSpan(8)));

        // Written zeroes are data.
        await raw.SendRequestAsync(0, CmdRead, cookie: 2, offset: 131072, length: 4096);
        var zeroes = await raw.ReadChunkAsync();
        Assert.Equal((ReplyDone, ChunkData, 2ul), (zeroes.Flags, zeroes.Type, zeroes.Cookie));
        Assert.Equal(new byte[4096], zeroes.Payload.AsSpan(8).ToArray());

        // Data then a hole: two chunks in one reply.
        await raw.SendRequestAsync(0, CmdRead, cookie: 3, offset: 65536, length: 8192);
        var first = await raw.ReadChunkAsync();
        var second = await raw.ReadChunkAsync();
        Assert.Equal(((ushort)0, ChunkData, 3ul), (first.Flags, first.Type, first.Cookie));
        Assert.Equal(65536ul, BinaryPrimitives.ReadUInt64BigEndian(first.Payload));
        Assert.Equal(data, first.Payload.AsSpan(8).ToArray());
        Assert.Equal((ReplyDone, ChunkHole, 3ul), (second.Flags, second.Type, second.Cookie));
        Assert.Equal(69632ul, BinaryPrimitives.ReadUInt64BigEndian(second.Payload));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(second.Payload.AsSpan(8)));

        // Data only: one data chunk.
        await raw.SendRequestAsync(0, CmdRead, cookie: 4, offset: 65536 + 100, length: 1000);
        var part = await raw.ReadChunkAsync();
        Assert.Equal((ReplyDone, ChunkData, 4ul), (part.Flags, part.Type, part.Cookie));
        Assert.Equal(data.AsSpan(100, 1000).ToArray(), part.Payload.AsSpan(8).ToArray());
    }

    [Fact]
    public async Task Requests_beyond_the_in_flight_limit_wait_for_a_slot_and_are_all_answered()
    {
        const int slots = 4;
        const ulong readCookie = 99;
        var received = 0;
        await using var env = await NbdTestServer.StartAsync(configure: o =>
        {
            o.MaxInFlightPerConnection = slots;
            o.RequestReceived = (_, _) => Interlocked.Increment(ref received);
        });
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);

        // Writes held at the quiesced node take every slot; the read behind them, which a free slot
        // would answer at once (reads do not pass the quiesce gate), has to wait for one, and so do
        // the writes behind it.
        var quiesced = await env.Disk.QuiesceGate.QuiesceAsync();
        var burst = new List<byte>();
        for (var i = 0; i < slots; i++)
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)i, offset: (ulong)(i * NbdTestServer.Granularity), length: 4096, Pattern(4096, i)));
        burst.AddRange(NbdRawConnection.Request(0, CmdRead, cookie: readCookie, offset: 1 << 20, length: 512));
        for (var i = slots; i < 2 * slots; i++)
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)i, offset: (ulong)(i * NbdTestServer.Granularity), length: 4096, Pattern(4096, i)));
        try
        {
            await raw.WriteAsync([.. burst]);
            await WaitUntilAsync(() => Volatile.Read(ref received) > slots, "the read behind the held writes was received");
            Assert.Equal(slots, Assert.Single(env.Server.OpenConnections).RequestsInFlight);
        }
        finally
        {
            quiesced.Dispose();
        }

        var answered = new List<ulong>();
        for (var n = 0; n < (2 * slots) + 1; n++)
        {
            var (error, cookie) = await raw.ReadSimpleReplyAsync();
            Assert.Equal(0u, error);
            answered.Add(cookie);
            if (cookie == readCookie)
                Assert.Equal(new byte[512], await raw.ReadAsync(512));
        }
        Assert.NotEqual(readCookie, answered[0]); // a slot freed by a write, not the read, came first
        Assert.Equal(Enumerable.Range(0, 2 * slots).Select(i => (ulong)i).Append(readCookie).Order(), answered.Order());
        for (var i = 0; i < 2 * slots; i++)
            Assert.Equal(Pattern(4096, i), await ReadDiskAsync(env, i * NbdTestServer.Granularity, 4096));
    }

    [Fact]
    public async Task Replies_finished_on_the_pool_overtake_held_writes_and_never_interleave()
    {
        const int count = 8;
        const int readSize = 256 * 1024; // beyond the inline limit: read on the thread pool, replied from the sender thread
        await using var env = await NbdTestServer.StartAsync(unix: true);
        var content = Pattern(count * readSize, 21);
        await env.Disk.WriteAsync(0, content);
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: true);

        var quiesced = await env.Disk.QuiesceGate.QuiesceAsync();
        var burst = new List<byte>();
        for (var i = 0; i < count; i++)
        {
            var writeAt = (ulong)(((2 * count) + i) * NbdTestServer.Granularity);
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)(100 + i), offset: writeAt, length: 4096, Pattern(4096, 200 + i)));
            burst.AddRange(NbdRawConnection.Request(0, CmdRead, cookie: (ulong)i, offset: (ulong)(i * readSize), length: readSize));
        }
        await raw.WriteAsync([.. burst]);

        // Every read is answered while the writes sent before each of them are held: one whole
        // data chunk each (a torn or interleaved reply would break the framing ReadChunkAsync checks).
        try
        {
            var reads = new HashSet<ulong>();
            for (var n = 0; n < count; n++)
            {
                var chunk = await raw.ReadChunkAsync(); // a server answering in order would never send it
                Assert.Equal((ReplyDone, ChunkData), (chunk.Flags, chunk.Type));
                Assert.True(chunk.Cookie < count && reads.Add(chunk.Cookie), $"unexpected or repeated reply {chunk.Cookie}");
                var offset = (int)BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload);
                Assert.Equal((int)chunk.Cookie * readSize, offset);
                Assert.True(content.AsSpan(offset, readSize).SequenceEqual(chunk.Payload.AsSpan(8)), $"read {chunk.Cookie} returned other data");
            }
        }
        finally
        {
            quiesced.Dispose();
        }
        var writes = new List<ulong>();
        for (var n = 0; n < count; n++)
        {
            var (error, cookie) = await raw.ReadSimpleReplyAsync();
            Assert.Equal(0u, error);
            writes.Add(cookie);
        }
        Assert.Equal(Enumerable.Range(100, count).Select(i => (ulong)i), writes.Order());
    }

    [Fact]
    public async Task A_client_gone_mid_burst_leaves_its_accepted_writes_applied_and_marked_and_nothing_of_the_cut_one()
    {
        const int writes = 4;
        var granule = NbdTestServer.Granularity;
        await using var env = await NbdTestServer.StartAsync(unix: true);
        await using (var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint))
        {
            await raw.StartAsync();
            await raw.GoAsync("disk0", structured: false);

            // Writes to every other granule, held at the quiesced node, then a write cut off in its
            // payload; the client is gone before any of them can reply.
            var quiesced = await env.Disk.QuiesceGate.QuiesceAsync();
            var burst = new List<byte>();
            for (var i = 0; i < writes; i++)
                burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: (ulong)i, offset: (ulong)(2 * i * granule), length: 4096, Pattern(4096, 30 + i)));
            burst.AddRange(NbdRawConnection.Request(0, CmdWrite, cookie: 9, offset: (ulong)(2 * writes * granule), length: 65536, Pattern(65536, 39))[..(28 + 1000)]);
            await raw.WriteAsync([.. burst]);
            await raw.WaitUntilServerReadAllAsync();
            raw.Abort();
            quiesced.Dispose();
        }

        // The connection ends only after the writes it accepted have finished.
        await WaitUntilAsync(() => env.Server.ConnectionCount == 0, "the connection of the vanished client ended");
        for (var i = 0; i < writes; i++)
            Assert.Equal(Pattern(4096, 30 + i), await ReadDiskAsync(env, 2 * i * granule, 4096));
        Assert.Equal(new byte[65536], await ReadDiskAsync(env, 2 * writes * granule, 65536));
        Assert.Equal(
            Enumerable.Range(0, writes).Select(i => ((long)(2 * i * granule), (long)granule)),
            env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize));

        await using var client = await env.ConnectAsync();
        var back = new byte[4096];
        await client.ReadAsync(0, back);
        Assert.Equal(Pattern(4096, 30), back);
    }

    [Fact]
    public async Task Clients_that_stop_reading_their_replies_are_no_longer_read_and_cost_a_bounded_backlog()
    {
        const int size = 1 << 20;
        const int requests = 128; // 128 MiB of replies per client, far beyond the bound
        const int clients = 3; // each connection races its own way to the bound; every one must stop
        const int slots = 8;
        await using var env = await NbdTestServer.StartAsync(unix: true, configure: o =>
        {
            o.MaxInFlightPerConnection = slots;
            o.StopGracePeriod = TimeSpan.FromMilliseconds(200);
        });
        await env.Disk.WriteAsync(0, Pattern((int)NbdTestServer.DiskSize, 5));

        var stuck = new List<NbdRawConnection>();
        for (var c = 0; c < clients; c++)
        {
            var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
            await raw.StartAsync();
            await raw.GoAsync("disk0", structured: false);
            stuck.Add(raw);
        }
        var connections = env.Server.OpenConnections;
        Assert.Equal(clients, connections.Count);

        // 3.5 KiB of requests per client, all in the server's socket buffer at once; no client reads.
        var burst = new List<byte>();
        for (var i = 0; i < requests; i++)
            burst.AddRange(NbdRawConnection.Request(0, CmdRead, cookie: (ulong)i, offset: (ulong)(i % (NbdTestServer.DiskSize / size) * size), length: size));
        foreach (var raw in stuck)
            await raw.WriteAsync([.. burst]);

        // Each reader stops taking requests once its unsent replies pass the bound (or sooner, when it
        // waits in a send of its own), and what it took finishes; it does not go on taking every
        // request its client sent and hold all their replies. Once a send waits for a client that
        // reads nothing, none completes, so either state lasts.
        var bound = NbdReplyWriter.DefaultBacklogLimit + ((slots + 1) * (size + 16L));
        foreach (var connection in connections)
        {
            var replies = connection.Replies;
            await WaitUntilAsync(
                () => (connection.RequestsInFlight == 0 && (replies.ReaderWaitsForRoom || replies.ReaderSends)) || replies.Replies == requests,
                "the server stopped taking requests or took them all");
            Assert.True(replies.Replies < requests, $"the server took all {replies.Replies} requests of a client that reads no reply");
            Assert.True(replies.PeakBacklog <= bound, $"{replies.PeakBacklog} bytes of replies held for a client that reads none (bound {bound})");
        }

        // Meanwhile another client is served.
        await using (var other = await env.ConnectAsync())
        {
            await other.WriteAsync(0, Pattern(4096, 6));
            var back = new byte[4096];
            await other.ReadAsync(0, back);
            Assert.Equal(Pattern(4096, 6), back);
        }

        // Closing the export's connections cuts the stuck ones after the grace, their blocked sends included.
        await WaitUntilAsync(() => env.Server.ConnectionCount == clients, "the other client's connection ended");
        Assert.Equal(clients, env.Server.DisconnectExport("disk0"));
        await WaitUntilAsync(() => env.Server.ConnectionCount == 0, "the stuck connections were cut");
        foreach (var raw in stuck)
            raw.Abort();
    }
}
