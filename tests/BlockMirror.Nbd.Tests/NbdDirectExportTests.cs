using System.Net.Sockets;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Tests.Shared;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// An export of an O_DIRECT node (cache.direct): payloads are received, and reads served, in
/// page-aligned buffers, so an aligned request is one pwrite or pread from the NBD buffer itself
/// (the image counts every request it had to bounce); unaligned requests still bounce, correctly.
/// Over real sockets, on a real file opened with O_DIRECT.
/// </summary>
public sealed class NbdDirectExportTests
{
    private const int KiB = 1024;

    [Theory]
    [InlineData(1)]
    [InlineData(4 * KiB)]
    [InlineData(5 * KiB)]
    [InlineData(64 * KiB)]
    [InlineData(1024 * KiB)]
    [InlineData(32 * 1024 * KiB)]
    public void Aligned_buffer_has_a_page_aligned_data_area_of_the_length_behind_room_for_a_header(int length)
    {
        var buffer = NbdAlignedBuffers.Rent(length);
        try
        {
            var offset = NbdAlignedBuffers.DataOffset(buffer);
            Assert.True(offset >= NbdWire.DataChunkHeaderSize && offset >= NbdConstants.SimpleReplyHeaderSize, $"data at {offset}: no room for a header");
            Assert.True(offset + length <= buffer.Length, $"data at {offset} + {length} overruns the {buffer.Length}-byte buffer");
            Assert.True(NbdAlignedBuffers.Capacity(buffer) >= length);
            Assert.Equal(0, AddressOf(buffer, offset) % NbdAlignedBuffers.Alignment);
            // The offset is a property of the pinned array: asked again (after a GC), the same, still aligned.
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            Assert.Equal(offset, NbdAlignedBuffers.DataOffset(buffer));
            Assert.Equal(0, AddressOf(buffer, offset) % NbdAlignedBuffers.Alignment);
        }
        finally
        {
            NbdAlignedBuffers.Return(buffer);
        }
    }

    [Fact]
    public void Aligned_reply_is_sent_from_its_offset_in_order_with_copied_and_pooled_replies()
    {
        var path = Path.Combine(Path.GetTempPath(), $"bm-aligned-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
        using var server = listener.Accept();
        try
        {
            var writer = new NbdReplyWriter(new NbdChannel(server), e => Assert.Fail($"send failed: {e}"));
            var aligned = NbdAlignedBuffers.Rent(8 * KiB);
            var start = NbdAlignedBuffers.DataOffset(aligned) - 2;
            aligned.AsSpan().Fill(0xEE); // bytes around the reply must not be sent
            aligned.AsSpan(start, 2 + (8 * KiB)).Fill(0x5A);

            writer.BeginBatch();
            writer.Enqueue([1, 2, 3]);
            writer.EnqueueAligned(aligned, start, 2 + (8 * KiB));
            writer.Enqueue([4]);
            writer.EndBatch();

            Assert.Equal((1L, 3L), (writer.Sends, writer.Replies));
            var sent = new byte[3 + 2 + (8 * KiB) + 1];
            for (var done = 0; done < sent.Length;)
            {
                var n = client.Receive(sent.AsSpan(done));
                Assert.True(n > 0, "the writer's side closed");
                done += n;
            }
            Assert.Equal([1, 2, 3], sent[..3]);
            Assert.All(sent[3..^1], b => Assert.Equal(0x5A, b));
            Assert.Equal(4, sent[^1]);
            writer.Dispose();
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Aligned_requests_to_a_direct_export_go_straight_from_the_NBD_buffers(bool structured)
    {
        await using var env = await NbdTestServer.StartAsync(unix: true);
        var node = await AddDirectExportAsync(env);
        var image = Assert.IsType<RawFileImage>(node.Image);
        Assert.True(image.CacheDirect);
        await using var client = await env.ConnectAsync("direct0", new NbdClientOptions { StructuredReplies = structured });

        var model = new byte[NbdTestServer.DiskSize];
        var random = new Random(structured ? 3 : 4);
        foreach (var (offset, length) in new[] { (0, 4 * KiB), (12 * KiB, 64 * KiB), (1024 * KiB, 1024 * KiB), (4096 * KiB, 4 * KiB) })
        {
            var data = new byte[length];
            random.NextBytes(data);
            await client.WriteAsync(offset, data);
            data.CopyTo(model, offset);
        }
        foreach (var (offset, length) in new[] { (0, 4 * KiB), (8 * KiB, 128 * KiB), (1024 * KiB, 1024 * KiB), (4096 * KiB, 4 * KiB) })
        {
            var back = new byte[length];
            await client.ReadAsync(offset, back);
            Assert.True(back.AsSpan().SequenceEqual(model.AsSpan(offset, length)), $"read [{offset}, +{length}) differs");
        }
        Assert.Equal(0, image.DirectBounces);
    }

    [Fact]
    public async Task Unaligned_requests_to_a_direct_export_match_a_byte_model()
    {
        await using var env = await NbdTestServer.StartAsync(unix: true);
        var node = await AddDirectExportAsync(env);
        await using var client = await env.ConnectAsync("direct0");

        var model = new byte[NbdTestServer.DiskSize];
        var random = new Random(9);
        for (var i = 0; i < 64; i++)
        {
            var offset = random.Next(0, (int)NbdTestServer.DiskSize - (70 * KiB));
            var length = random.Next(1, 70 * KiB);
            if (random.Next(2) == 0)
            {
                var data = new byte[length];
                random.NextBytes(data);
                await client.WriteAsync(offset, data);
                data.CopyTo(model, offset);
            }
            else
            {
                var back = new byte[length];
                await client.ReadAsync(offset, back);
                Assert.True(back.AsSpan().SequenceEqual(model.AsSpan(offset, length)), $"read [{offset}, +{length}) differs");
            }
        }
        // And from the file itself, through the page cache: the bytes reached it, not a buffer of ours.
        await client.FlushAsync();
        var file = await File.ReadAllBytesAsync(Path.Combine(env.Directory, "images", "direct0.img"));
        Assert.True(file.AsSpan().SequenceEqual(model), "the file differs from the model");
        Assert.True(Assert.IsType<RawFileImage>(node.Image).DirectBounces > 0, "unaligned requests are widened through a bounce buffer");
    }

    private static async Task<BlockNode> AddDirectExportAsync(NbdTestServer env)
    {
        await env.Layer.CreateNodeAsync(new NodeSpec("direct0", "raw", "direct0.img", null, NbdTestServer.DiskSize, false, CacheDirect: true));
        await env.Layer.AddExportAsync("direct0", "direct0", writable: true, []);
        return env.Layer.GetNode("direct0");
    }

    private static unsafe long AddressOf(byte[] buffer, int offset)
    {
        fixed (byte* p = buffer)
            return (long)(p + offset);
    }
}
