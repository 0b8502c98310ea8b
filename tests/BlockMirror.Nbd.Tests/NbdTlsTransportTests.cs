using System.Net.Security;
using System.Net.Sockets;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The stream under a TLS session (<see cref="NbdTlsTransport"/>), over a connected pair of Unix
/// sockets: what it reads ahead is handed out in order whatever the readers' sizes, a message
/// that arrives in pieces is waited for, gathered writes leave in order only when flushed, and a
/// whole TLS session runs over two of them with records split across receives and buffers.
/// </summary>
public sealed class NbdTlsTransportTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"bm-tlstransport-{Guid.NewGuid():N}.sock");
    private readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly Socket _peer = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly Socket _local;
    private readonly NbdTlsTransport _transport;

    public NbdTlsTransportTests()
    {
        _listener.Bind(new UnixDomainSocketEndPoint(_path));
        _listener.Listen(1);
        _peer.Connect(new UnixDomainSocketEndPoint(_path));
        _local = _listener.Accept();
        _transport = new NbdTlsTransport(new NetworkStream(_local, ownsSocket: true));
    }

    public void Dispose()
    {
        _transport.Dispose();
        _peer.Dispose();
        _listener.Dispose();
        File.Delete(_path);
    }

    private static byte[] RandomBytes(int count)
    {
        var data = new byte[count];
        Random.Shared.NextBytes(data);
        return data;
    }

    private void PeerSend(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
            data = data[_peer.Send(data)..];
    }

    private byte[] PeerReceive(int count)
    {
        var data = new byte[count];
        var done = 0;
        while (done < count)
        {
            var n = _peer.Receive(data.AsSpan(done));
            Assert.True(n > 0, "the transport's side closed");
            done += n;
        }
        return data;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Bytes_spanning_several_read_ahead_buffers_come_out_in_order_whatever_the_read_sizes(bool async)
    {
        // 2.5 buffers: reads of odd sizes cross every refill, and the large ones go past the buffer.
        var data = RandomBytes(NbdTlsTransport.BufferBytes * 5 / 2 + 77);
        var sender = Task.Run(() => PeerSend(data));
        int[] sizes = [5, 1, 16 * 1024 + 13, 3, NbdTlsTransport.BufferBytes + 1, 4096, 29];
        var back = new byte[data.Length];
        var done = 0;
        for (var i = 0; done < back.Length; i++)
        {
            var want = Math.Min(sizes[i % sizes.Length], back.Length - done);
            var n = async ? await _transport.ReadAsync(back.AsMemory(done, want)) : _transport.Read(back.AsSpan(done, want));
            Assert.InRange(n, 1, want);
            done += n;
        }
        await sender;
        Assert.Equal(data, back);
        Assert.Equal(0, _transport.ReadAhead);
    }

    [Fact]
    public void One_receive_serves_several_small_reads_from_the_buffer()
    {
        var data = RandomBytes(5 + 21 + 100);
        PeerSend(data);
        var first = new byte[5];
        _transport.ReadExactly(first);
        // The rest arrived with the same send; whatever the first receive took is read from memory.
        var buffered = _transport.ReadAhead;
        Assert.InRange(buffered, 1, data.Length - 5);
        var second = new byte[Math.Min(21, buffered)];
        Assert.Equal(second.Length, _transport.Read(second));
        Assert.Equal(buffered - second.Length, _transport.ReadAhead);
        var rest = new byte[data.Length - 5 - second.Length];
        _transport.ReadExactly(rest);
        byte[] back = [.. first, .. second, .. rest];
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task A_message_sent_in_two_pieces_is_read_whole_once_the_second_arrives()
    {
        var data = RandomBytes(28 + 4096);
        PeerSend(data.AsSpan(0, 11));
        var whole = new byte[data.Length];
        var reading = _transport.ReadExactlyAsync(whole).AsTask();
        // Nothing more can arrive before the second piece: the read must still be waiting for it.
        Assert.False(reading.IsCompleted);
        PeerSend(data.AsSpan(11));
        await reading;
        Assert.Equal(data, whole);
    }

    [Fact]
    public void End_of_stream_reads_zero_after_what_was_buffered()
    {
        PeerSend([1, 2, 3]);
        _peer.Shutdown(SocketShutdown.Send);
        var buffer = new byte[2];
        _transport.ReadExactly(buffer);
        Assert.Equal(1, _transport.Read(buffer));
        Assert.Equal(3, buffer[0]);
        Assert.Equal(0, _transport.Read(buffer));
    }

    [Fact]
    public void Without_gathering_every_write_goes_out_at_once()
    {
        // The TLS handshake's messages: the other side answers them before anything is flushed.
        _transport.Write([1, 2, 3]);
        Assert.Equal(0, _transport.Gathered);
        Assert.Equal(new byte[] { 1, 2, 3 }, PeerReceive(3));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Gathered_writes_wait_for_the_flush_and_leave_in_order_even_past_the_buffer(bool async)
    {
        _transport.GatherWrites = true;
        var header = RandomBytes(28);
        var big = RandomBytes(NbdTlsTransport.BufferBytes + 5000); // larger than the buffer: sent straight, after the header
        var fill = RandomBytes(NbdTlsTransport.BufferBytes - 100);
        var tail = RandomBytes(300); // does not fit behind fill: fill goes out first
        byte[] expected = [.. header, .. big, .. fill, .. tail];
        // Read while writing: a direct write is larger than the socket's buffer.
        var receiving = Task.Run(() => PeerReceive(expected.Length));
        if (async)
        {
            await _transport.WriteAsync(header);
            Assert.Equal(header.Length, _transport.Gathered);
            await _transport.WriteAsync(big);
            await _transport.WriteAsync(fill);
            await _transport.WriteAsync(tail);
            Assert.Equal(tail.Length, _transport.Gathered);
            await _transport.FlushAsync();
        }
        else
        {
            _transport.Write(header);
            Assert.Equal(header.Length, _transport.Gathered);
            _transport.Write(big);
            _transport.Write(fill);
            _transport.Write(tail);
            Assert.Equal(tail.Length, _transport.Gathered);
            _transport.Flush();
        }
        Assert.Equal(0, _transport.Gathered);
        Assert.Equal(expected, await receiving);
    }

    [Fact]
    public void Disposing_sends_what_is_still_gathered()
    {
        _transport.GatherWrites = true;
        _transport.Write([9, 8, 7]);
        _transport.Dispose();
        Assert.Equal(new byte[] { 9, 8, 7 }, PeerReceive(3));
        Assert.Equal(0, _peer.Receive(new byte[1]));
    }

    [OpensslFact]
    public async Task A_tls_session_over_two_transports_carries_messages_whose_records_cross_every_buffer()
    {
        using var certs = new TestCertificates();
        var server = certs.Issue("/O=BlockMirror/CN=localhost");
        var serverTls = NbdServerTls.Load(server.CertificatePath, server.KeyPath, null, false, null);
        var clientTls = NbdClientTls.Load(certs.Ca.CertificatePath, null, null);
        var peerTransport = new NbdTlsTransport(new NetworkStream(_peer, ownsSocket: false));
        await using var serverSession = new SslStream(_transport, leaveInnerStreamOpen: true);
        await using var clientSession = new SslStream(peerTransport, leaveInnerStreamOpen: false);
        await Task.WhenAll(
            serverSession.AuthenticateAsServerAsync(serverTls.AuthenticationOptions(static (_, _, _, _) => true)),
            clientSession.AuthenticateAsClientAsync(clientTls.AuthenticationOptions("localhost", _ => { })));
        _transport.GatherWrites = true;
        peerTransport.GatherWrites = true;

        // Requests as the client sends them: a 28-byte header and a payload of many records, one
        // flush per request; the server reads them as NbdSocketReader does, in odd sizes.
        var messages = new[] { RandomBytes(28), RandomBytes(1024 * 1024 + 3), RandomBytes(28), RandomBytes(17), RandomBytes(700 * 1024) };
        var sending = Task.Run(async () =>
        {
            foreach (var m in messages)
            {
                await clientSession.WriteAsync(m);
                await clientSession.FlushAsync();
            }
        });
        foreach (var m in messages)
        {
            var got = new byte[m.Length];
            var done = 0;
            while (done < got.Length)
            {
                var n = serverSession.Read(got.AsSpan(done, Math.Min(got.Length - done, 40000)));
                Assert.True(n > 0, "the session ended early");
                done += n;
            }
            Assert.Equal(m, got);
        }
        await sending;

        // And back: a reply batch written by the server's sender, flushed once.
        var reply = RandomBytes(3 * 16 * 1024 + 100);
        serverSession.Write(reply);
        serverSession.Flush();
        var back = new byte[reply.Length];
        await clientSession.ReadExactlyAsync(back);
        Assert.Equal(reply, back);
    }
}
