using System.Buffers;
using System.Net.Sockets;

namespace BlockMirror.Nbd.Tests;

/// <summary>The coalescing reply writer over a connected pair of Unix sockets.</summary>
public sealed class NbdReplyWriterTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"bm-replies-{Guid.NewGuid():N}.sock");
    private readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly Socket _client = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly Socket _server;

    public NbdReplyWriterTests()
    {
        _listener.Bind(new UnixDomainSocketEndPoint(_path));
        _listener.Listen(1);
        _client.Connect(new UnixDomainSocketEndPoint(_path));
        _server = _listener.Accept();
    }

    public void Dispose()
    {
        _server.Dispose();
        _client.Dispose();
        _listener.Dispose();
        File.Delete(_path);
    }

    private byte[] Receive(int count)
    {
        var data = new byte[count];
        var done = 0;
        while (done < count)
        {
            var n = _client.Receive(data.AsSpan(done));
            Assert.True(n > 0, "the writer's side closed");
            done += n;
        }
        return data;
    }

    [Fact]
    public void Replies_queued_while_the_reader_holds_its_batch_go_out_in_one_send_in_order()
    {
        var writer = new NbdReplyWriter(new NbdChannel(_server), e => Assert.Fail($"send failed: {e}"));
        var pooled = ArrayPool<byte>.Shared.Rent(5000);
        pooled.AsSpan(0, 5000).Fill(0x44);

        writer.BeginBatch();
        writer.Enqueue([1, 2, 3]);
        writer.EnqueuePooled(pooled, 5000);
        writer.Enqueue([4, 5]);
        Assert.Equal(0, writer.Sends);
        writer.EndBatch();

        Assert.Equal((1L, 3L), (writer.Sends, writer.Replies));
        var sent = Receive(3 + 5000 + 2);
        Assert.Equal([1, 2, 3], sent[..3]);
        Assert.All(sent[3..5003], b => Assert.Equal(0x44, b));
        Assert.Equal([4, 5], sent[5003..]);

        // Outside a batch (the reader waits in a receive) a reply goes out at once, from the sender thread.
        writer.Enqueue([9]);
        Assert.Equal([9], Receive(1));
        Assert.Equal(2, writer.Sends);
        writer.Dispose();
    }

    [Fact]
    public async Task Queuing_a_reply_off_the_reader_never_blocks_on_a_client_that_does_not_read()
    {
        const int size = 1 << 20;
        const int count = 4; // far more than the socket buffers hold
        var writer = new NbdReplyWriter(new NbdChannel(_server), e => Assert.Fail($"send failed: {e}"));
        for (var i = 0; i < count; i++)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(size);
            buffer.AsSpan(0, size).Fill((byte)(i + 1));
            // As a request that finished on the thread pool queues its reply.
            await Task.Run(() => writer.EnqueuePooled(buffer, size)).WaitAsync(TimeSpan.FromSeconds(30)); // throws when it waited for the client
        }

        var sent = Receive(count * size);
        for (var i = 0; i < count; i++)
            Assert.True(sent.AsSpan(i * size, size).IndexOfAnyExcept((byte)(i + 1)) < 0, $"reply {i} out of order or torn");
        writer.Dispose();
    }

    [Fact]
    public async Task All_sent_completes_only_when_the_last_queued_reply_has_left()
    {
        const int size = 4 << 20; // more than the socket buffers hold: it cannot leave before the client reads
        var writer = new NbdReplyWriter(new NbdChannel(_server), e => Assert.Fail($"send failed: {e}"));
        Assert.True(writer.WhenAllSentAsync().IsCompletedSuccessfully); // nothing queued

        var buffer = ArrayPool<byte>.Shared.Rent(size);
        buffer.AsSpan(0, size).Fill(0x33);
        writer.EnqueuePooled(buffer, size);
        var allSent = writer.WhenAllSentAsync();
        Assert.False(allSent.IsCompleted);

        var sent = Receive(size);
        await allSent.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(sent.AsSpan().IndexOfAnyExcept((byte)0x33) < 0);
        writer.Dispose();
    }

    [Fact]
    public void A_failed_send_is_reported_once_and_later_replies_are_dropped()
    {
        var failures = new List<Exception>();
        var writer = new NbdReplyWriter(new NbdChannel(_server), failures.Add);
        _server.Shutdown(SocketShutdown.Send);

        writer.BeginBatch();
        writer.Enqueue([1, 2, 3]);
        writer.EndBatch(); // sends on this thread, and fails

        writer.EnqueuePooled(ArrayPool<byte>.Shared.Rent(100), 100);
        writer.Enqueue([4]);
        writer.BeginBatch();
        writer.EndBatch();

        Assert.IsAssignableFrom<SocketException>(Assert.Single(failures));
        Assert.Equal((1L, 1L), (writer.Sends, writer.Replies)); // the later replies were neither queued nor sent
        writer.Dispose();
    }

    [Fact]
    public async Task Past_the_backlog_limit_the_writer_is_backed_up_until_the_client_reads()
    {
        const int size = 1 << 20;
        const int count = 3;
        var writer = new NbdReplyWriter(new NbdChannel(_server), e => Assert.Fail($"send failed: {e}"), backlogLimit: 2L * size);
        for (var i = 0; i < count; i++)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(size);
            buffer.AsSpan(0, size).Fill((byte)(i + 1));
            Assert.False(writer.IsBackedUp, $"backed up at {writer.Backlog} bytes, within the limit");
            await Task.Run(() => writer.EnqueuePooled(buffer, size)); // as a request finished on the pool
        }

        // 3 MiB queued, and the first 1 MiB send cannot finish before the client reads: over the limit.
        Assert.True(writer.IsBackedUp, $"not backed up at {writer.Backlog} bytes");
        var room = Task.Factory.StartNew(() => writer.WaitForRoom(CancellationToken.None), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        var sent = Receive(count * size);
        await room.WaitAsync(TimeSpan.FromSeconds(30));
        await writer.WhenAllSentAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal((0L, false), (writer.Backlog, writer.IsBackedUp));
        Assert.Equal(count * (long)size, writer.PeakBacklog);
        for (var i = 0; i < count; i++)
            Assert.True(sent.AsSpan(i * size, size).IndexOfAnyExcept((byte)(i + 1)) < 0, $"reply {i} out of order or torn");
        writer.Dispose();
    }

    [Fact]
    public void A_failed_send_frees_a_reader_waiting_for_room()
    {
        var failures = new List<Exception>();
        var writer = new NbdReplyWriter(new NbdChannel(_server), failures.Add, backlogLimit: 10);
        writer.BeginBatch();
        writer.Enqueue(new byte[100]);
        Assert.True(writer.IsBackedUp);
        _server.Shutdown(SocketShutdown.Send);
        writer.EndBatch(); // fails; the stream is dead, so nothing is owed to the client any more

        Assert.Single(failures);
        Assert.False(writer.IsBackedUp);
        writer.WaitForRoom(new CancellationToken(canceled: false)); // returns at once
        writer.Dispose();
    }
}
