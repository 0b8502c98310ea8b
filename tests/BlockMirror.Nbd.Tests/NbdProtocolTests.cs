using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Nbd.Tests;

/// <summary>Byte-level protocol tests: what the server sends, and how it survives clients that misbehave.</summary>
public sealed class NbdProtocolTests
{
    private const uint RepAck = 1;
    private const uint RepServer = 2;
    private const uint RepInfo = 3;
    private const uint RepMetaContext = 4;
    private const uint ErrUnsup = 0x80000001;
    private const uint ErrPolicy = 0x80000002;
    private const uint ErrInvalid = 0x80000003;
    private const uint ErrUnknown = 0x80000006;
    private const uint ErrTooBig = 0x80000009;

    private static async Task AssertServesAsync(NbdTestServer env)
    {
        await using var client = await env.ConnectAsync();
        var data = new byte[512];
        data.AsSpan().Fill(0x5A);
        await client.WriteAsync(4096, data);
        var back = new byte[512];
        await client.ReadAsync(4096, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Greeting_offers_fixed_newstyle_and_no_zeroes()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.ReadGreetingAsync();
        Assert.Equal(3, raw.HandshakeFlags);
    }

    [Fact]
    public async Task Go_sends_block_size_and_export_info_then_ack()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(7, NbdRawConnection.NameAndInfoRequests("disk0", 1, 3));
        var replies = await raw.ReadOptionRepliesAsync(7);
        Assert.Equal(RepAck, replies[^1].Type);
        var infos = replies.Where(r => r.Type == RepInfo).ToDictionary(r => BinaryPrimitives.ReadUInt16BigEndian(r.Data), r => r.Data);
        Assert.Equal("disk0", Encoding.UTF8.GetString(infos[1].AsSpan(2)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(infos[3].AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(infos[3].AsSpan(6)));
        Assert.Equal(32u << 20, BinaryPrimitives.ReadUInt32BigEndian(infos[3].AsSpan(10)));
        Assert.Equal((ulong)NbdTestServer.DiskSize, BinaryPrimitives.ReadUInt64BigEndian(infos[0].AsSpan(2)));
        var flags = BinaryPrimitives.ReadUInt16BigEndian(infos[0].AsSpan(10));
        // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN; no READ_ONLY, no DF (no structured replies).
        Assert.Equal(0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100, flags);

        // Transmission works: an unstructured read gets a simple reply followed by the data.
        await raw.SendRequestAsync(0, 0, cookie: 77, offset: 0, length: 16);
        var (error, cookie) = await raw.ReadSimpleReplyAsync();
        Assert.Equal((0u, 77ul), (error, cookie));
        Assert.Equal(new byte[16], await raw.ReadAsync(16));
    }

    [Fact]
    public async Task Options_the_server_does_not_know_or_refuses_get_error_replies_and_haggling_continues()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();

        await raw.SendOptionAsync(42, [1, 2, 3]);
        Assert.Equal(ErrUnsup, (await raw.ReadOptionReplyAsync(42)).Type);
        await raw.SendOptionAsync(5, []); // STARTTLS
        Assert.Equal(ErrPolicy, (await raw.ReadOptionReplyAsync(5)).Type);
        await raw.SendOptionAsync(6, NbdRawConnection.NameAndInfoRequests("missing"));
        var unknown = await raw.ReadOptionReplyAsync(6);
        Assert.Equal(ErrUnknown, unknown.Type);
        Assert.Contains("missing", Encoding.UTF8.GetString(unknown.Data), StringComparison.Ordinal);
        await raw.SendOptionAsync(6, [0, 0, 0, 200, 1]); // name length beyond the data
        Assert.Equal(ErrInvalid, (await raw.ReadOptionReplyAsync(6)).Type);
        await raw.SendOptionAsync(8, [1]); // STRUCTURED_REPLY takes no data
        Assert.Equal(ErrInvalid, (await raw.ReadOptionReplyAsync(8)).Type);
        await raw.SendOptionAsync(10, NbdRawConnection.MetaQueries("disk0", "base:allocation")); // SET before structured
        Assert.Equal(ErrInvalid, (await raw.ReadOptionReplyAsync(10)).Type);
        await raw.SendOptionAsync(3, [9]); // LIST takes no data
        Assert.Equal(ErrInvalid, (await raw.ReadOptionReplyAsync(3)).Type);
        await raw.SendOptionAsync(99, new byte[100_000]); // too large to buffer: skipped
        Assert.Equal(ErrTooBig, (await raw.ReadOptionReplyAsync(99)).Type);

        var (size, _) = await raw.GoAsync("disk0");
        Assert.Equal((ulong)NbdTestServer.DiskSize, size);
    }

    [Fact]
    public async Task List_names_every_export()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(3, []);
        var replies = await raw.ReadOptionRepliesAsync(3);
        Assert.Equal(RepAck, replies[^1].Type);
        var names = replies.Where(r => r.Type == RepServer)
            .Select(r => Encoding.UTF8.GetString(r.Data.AsSpan(4, (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data))))
            .ToList();
        Assert.Equal(["disk0", "disk0-ro"], names);
    }

    [Theory]
    [InlineData(new string[0], new[] { "base:allocation", "qemu:dirty-bitmap:b0" })]
    [InlineData(new[] { "base:" }, new[] { "base:allocation" })]
    [InlineData(new[] { "qemu:" }, new[] { "qemu:dirty-bitmap:b0" })]
    [InlineData(new[] { "qemu:dirty-bitmap:" }, new[] { "qemu:dirty-bitmap:b0" })]
    [InlineData(new[] { "qemu:dirty-bitmap:b0", "x-other:thing", "qemu:dirty-bitmap:nope" }, new[] { "qemu:dirty-bitmap:b0" })]
    public async Task List_meta_context_follows_qemu_query_rules(string[] queries, string[] expected)
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(8, []);
        Assert.Equal(RepAck, (await raw.ReadOptionReplyAsync(8)).Type);
        await raw.SendOptionAsync(9, NbdRawConnection.MetaQueries("disk0", queries));
        var replies = await raw.ReadOptionRepliesAsync(9);
        Assert.Equal(RepAck, replies[^1].Type);
        var contexts = replies.Where(r => r.Type == RepMetaContext).ToList();
        Assert.All(contexts, r => Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(r.Data))); // ids are reserved in LIST
        Assert.Equal(expected, contexts.Select(r => Encoding.UTF8.GetString(r.Data.AsSpan(4))));
    }

    [Fact]
    public async Task Set_meta_context_prefix_queries_select_nothing()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(8, []);
        await raw.ReadOptionReplyAsync(8);
        await raw.SendOptionAsync(10, NbdRawConnection.MetaQueries("disk0", "base:", "qemu:dirty-bitmap:"));
        var replies = await raw.ReadOptionRepliesAsync(10);
        Assert.Equal([RepAck], replies.Select(r => r.Type));
    }

    [Fact]
    public async Task Export_name_option_enters_transmission_with_the_short_reply()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync(clientFlags: 3);
        await raw.SendOptionAsync(1, Encoding.UTF8.GetBytes("disk0"));
        var reply = await raw.ReadAsync(10); // NO_ZEROES: size and flags only
        Assert.Equal((ulong)NbdTestServer.DiskSize, BinaryPrimitives.ReadUInt64BigEndian(reply));
        await raw.SendRequestAsync(0, 3, cookie: 5, offset: 0, length: 0); // FLUSH
        Assert.Equal((0u, 5ul), await raw.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task Export_name_without_no_zeroes_gets_124_zero_bytes()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync(clientFlags: 1);
        await raw.SendOptionAsync(1, Encoding.UTF8.GetBytes("disk0"));
        var reply = await raw.ReadAsync(134);
        Assert.All(reply.AsSpan(10).ToArray(), b => Assert.Equal(0, b));
        await raw.SendRequestAsync(0, 3, cookie: 6, offset: 0, length: 0);
        Assert.Equal((0u, 6ul), await raw.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task Export_name_of_an_unknown_export_hangs_up()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(1, Encoding.UTF8.GetBytes("nope"));
        Assert.True(await raw.IsClosedByServerAsync());
        await AssertServesAsync(env);
    }

    [Fact]
    public async Task Abort_is_acknowledged_then_closed()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(2, []);
        Assert.Equal(RepAck, (await raw.ReadOptionReplyAsync(2)).Type);
        Assert.True(await raw.IsClosedByServerAsync());
    }

    [Theory]
    [InlineData("unknown-client-flags")]
    [InlineData("bad-option-magic")]
    [InlineData("option-too-large")]
    [InlineData("non-fixed-option")]
    [InlineData("bad-request-magic")]
    public async Task Malformed_clients_are_dropped_and_others_still_served(string fault)
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        switch (fault)
        {
            case "unknown-client-flags":
                await raw.StartAsync(clientFlags: 0xFFFF_FFFF);
                break;
            case "bad-option-magic":
                await raw.StartAsync();
                await raw.SendOptionAsync(7, [], magic: 0x1122334455667788);
                break;
            case "option-too-large":
                await raw.StartAsync();
                await raw.SendOptionAsync(7, []);
                await raw.ReadOptionReplyAsync(7); // GO with no data: invalid
                var header = new byte[16];
                BinaryPrimitives.WriteUInt64BigEndian(header, NbdRawConnection.OptMagic);
                BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), 7);
                BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), 0xFFFF_FFF0);
                await raw.WriteAsync(header);
                break;
            case "non-fixed-option":
                await raw.StartAsync(clientFlags: 0);
                await raw.SendOptionAsync(7, NbdRawConnection.NameAndInfoRequests("disk0"));
                break;
            case "bad-request-magic":
                await raw.StartAsync();
                await raw.GoAsync("disk0");
                await raw.WriteAsync(new byte[28]);
                break;
        }
        Assert.True(await raw.IsClosedByServerAsync());
        await AssertServesAsync(env);
    }

    [Fact]
    public async Task Abrupt_disconnects_at_any_point_leave_the_server_serving()
    {
        await using var env = await NbdTestServer.StartAsync();
        // A port probe.
        (await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint)).Abort();
        // Gone after the greeting.
        var greeted = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await greeted.ReadGreetingAsync();
        greeted.Abort();
        // Gone in the middle of an option.
        var midOption = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await midOption.StartAsync();
        await midOption.WriteAsync([0x49, 0x48, 0x41]);
        midOption.Abort();
        // Gone in the middle of a write payload: nothing of it may be applied.
        var midWrite = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await midWrite.StartAsync();
        await midWrite.GoAsync("disk0");
        await midWrite.SendRequestAsync(0, 1, cookie: 1, offset: 0, length: 1_048_576, payload: new byte[1000]);
        midWrite.Abort();
        // Gone with reads in flight whose replies cannot be delivered.
        var midRead = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await midRead.StartAsync();
        await midRead.GoAsync("disk0");
        for (var i = 0; i < 32; i++)
            await midRead.SendRequestAsync(0, 0, cookie: (ulong)i, offset: 0, length: 4 * 1024 * 1024);
        midRead.Abort();

        await AssertServesAsync(env);
        // Only AssertServesAsync's write (granule 0) is recorded; the cut-off 1 MiB write left nothing.
        Assert.Equal([(0L, (long)NbdTestServer.Granularity)], env.Disk.FindBitmap("b0")!.GetExtents(0, NbdTestServer.DiskSize));
    }

    [Fact]
    public async Task A_silent_client_is_dropped_after_the_handshake_timeout()
    {
        await using var env = await NbdTestServer.StartAsync(configure: o => o.HandshakeTimeout = TimeSpan.FromSeconds(2));
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.ReadGreetingAsync();
        Assert.True(await raw.IsClosedByServerAsync());
        await AssertServesAsync(env);
    }

    [Fact]
    public async Task Structured_read_of_a_hole_uses_hole_chunks_and_DF_forces_one_data_chunk()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        var (_, flags) = await raw.GoAsync("disk0", structured: true);
        Assert.NotEqual(0, flags & 0x80); // SEND_DF once structured

        await raw.SendRequestAsync(0, 0, cookie: 9, offset: 65536, length: 131072);
        var hole = await raw.ReadChunkAsync();
        Assert.Equal((ushort)1, hole.Flags); // DONE
        Assert.Equal((ushort)2, hole.Type); // OFFSET_HOLE
        Assert.Equal(9ul, hole.Cookie);
        Assert.Equal(65536ul, BinaryPrimitives.ReadUInt64BigEndian(hole.Payload));
        Assert.Equal(131072u, BinaryPrimitives.ReadUInt32BigEndian(hole.Payload.AsSpan(8)));

        await raw.SendRequestAsync(4, 0, cookie: 10, offset: 65536, length: 4096); // DF
        var data = await raw.ReadChunkAsync();
        Assert.Equal(((ushort)1, (ushort)1, 10ul), (data.Flags, data.Type, data.Cookie));
        Assert.Equal(8 + 4096, data.Payload.Length);

        // Errors of a structured READ come as an error chunk with a message.
        await raw.SendRequestAsync(0, 0, cookie: 11, offset: (ulong)NbdTestServer.DiskSize, length: 1);
        var error = await raw.ReadChunkAsync();
        Assert.Equal(((ushort)1, (ushort)0x8001, 11ul), (error.Flags, error.Type, error.Cookie));
        Assert.Equal(22u, BinaryPrimitives.ReadUInt32BigEndian(error.Payload));
        var messageLength = BinaryPrimitives.ReadUInt16BigEndian(error.Payload.AsSpan(4));
        Assert.True(messageLength > 0);
        Assert.Equal(6 + messageLength, error.Payload.Length);
    }

    [Fact]
    public async Task Block_status_replies_one_chunk_per_context_with_the_negotiated_ids()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(8, []);
        await raw.ReadOptionReplyAsync(8);
        await raw.SendOptionAsync(10, NbdRawConnection.MetaQueries("disk0", "qemu:dirty-bitmap:b0", "base:allocation"));
        var set = await raw.ReadOptionRepliesAsync(10);
        var ids = set.Where(r => r.Type == RepMetaContext)
            .ToDictionary(r => Encoding.UTF8.GetString(r.Data.AsSpan(4)), r => BinaryPrimitives.ReadUInt32BigEndian(r.Data));
        Assert.Equal(2, ids.Count);
        Assert.NotEqual(ids["base:allocation"], ids["qemu:dirty-bitmap:b0"]);
        await raw.GoAsync("disk0", structured: false); // already structured; contexts carry over to the same export

        await raw.SendRequestAsync(0, 7, cookie: 3, offset: 0, length: 65536);
        var first = await raw.ReadChunkAsync();
        var second = await raw.ReadChunkAsync();
        Assert.Equal((ushort)0, first.Flags);
        Assert.Equal((ushort)1, second.Flags);
        Assert.All(new[] { first, second }, c => Assert.Equal((ushort)5, c.Type));
        var byId = new[] { first, second }.ToDictionary(c => BinaryPrimitives.ReadUInt32BigEndian(c.Payload));
        var allocation = byId[ids["base:allocation"]].Payload;
        Assert.Equal(12, allocation.Length);
        Assert.Equal(65536u, BinaryPrimitives.ReadUInt32BigEndian(allocation.AsSpan(4)));
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32BigEndian(allocation.AsSpan(8)));
        var dirty = byId[ids["qemu:dirty-bitmap:b0"]].Payload;
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(dirty.AsSpan(8)));
    }

    [Fact]
    public async Task Contexts_chosen_for_another_export_do_not_carry_over()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.SendOptionAsync(8, []);
        await raw.ReadOptionReplyAsync(8);
        await raw.SendOptionAsync(10, NbdRawConnection.MetaQueries("disk0", "base:allocation"));
        await raw.ReadOptionRepliesAsync(10);
        await raw.GoAsync("disk0-ro", structured: false);
        await raw.SendRequestAsync(0, 7, cookie: 4, offset: 0, length: 4096);
        var error = await raw.ReadChunkAsync();
        Assert.Equal((ushort)0x8001, error.Type);
        Assert.Equal(22u, BinaryPrimitives.ReadUInt32BigEndian(error.Payload));
    }

    [Fact]
    public async Task Disc_finishes_requests_in_flight_then_closes()
    {
        await using var env = await NbdTestServer.StartAsync();
        await using var raw = await NbdRawConnection.OpenAsync(env.Server.LocalEndPoint);
        await raw.StartAsync();
        await raw.GoAsync("disk0", structured: false);
        var payload = new byte[65536];
        payload.AsSpan().Fill(0x77);
        await raw.SendRequestAsync(0, 1, cookie: 1, offset: 0, length: 65536, payload: payload);
        await raw.SendRequestAsync(0, 2, cookie: 2, offset: 0, length: 0); // DISC
        Assert.Equal((0u, 1ul), await raw.ReadSimpleReplyAsync());
        Assert.True(await raw.IsClosedByServerAsync());
        var back = new byte[65536];
        await env.Disk.ReadAsync(0, back);
        Assert.Equal(payload, back);
    }
}
