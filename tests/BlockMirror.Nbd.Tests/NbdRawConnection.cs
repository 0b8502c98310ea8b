using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// A hand-driven NBD connection for protocol tests: every byte is written and read explicitly,
/// so tests can send what a well-behaved client never would.
/// </summary>
internal sealed class NbdRawConnection : IAsyncDisposable
{
    public const ulong NbdMagic = 0x4e42444d41474943;
    public const ulong OptMagic = 0x49484156454F5054;
    public const ulong RepMagic = 0x3e889045565a9;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;

    private NbdRawConnection(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public ushort HandshakeFlags { get; private set; }

    public static async Task<NbdRawConnection> OpenAsync(EndPoint endPoint)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(endPoint);
        return new NbdRawConnection(socket);
    }

    /// <summary>Reads the 18-byte greeting and checks its magics.</summary>
    public async Task ReadGreetingAsync()
    {
        var greeting = await ReadAsync(18);
        Assert.Equal(NbdMagic, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(OptMagic, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
    }

    /// <summary>Greeting plus client flags (fixed newstyle, no zeroes by default).</summary>
    public async Task StartAsync(uint clientFlags = 3)
    {
        await ReadGreetingAsync();
        await WriteUInt32Async(clientFlags);
    }

    public Task WriteAsync(byte[] data) => _stream.WriteAsync(data).AsTask();

    public Task WriteUInt32Async(uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        return WriteAsync(b);
    }

    public Task SendOptionAsync(uint option, byte[] data, ulong magic = OptMagic) => WriteAsync(OptionBytes(option, data, magic));

    /// <summary>An option request as it goes on the wire.</summary>
    public static byte[] OptionBytes(uint option, byte[] data, ulong magic = OptMagic)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, magic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b, 16);
        return b;
    }

    public async Task<(uint Type, byte[] Data)> ReadOptionReplyAsync(uint expectedOption)
    {
        var h = await ReadAsync(20);
        Assert.Equal(RepMagic, BinaryPrimitives.ReadUInt64BigEndian(h));
        Assert.Equal(expectedOption, BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)));
        var type = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return (type, await ReadAsync((int)length));
    }

    /// <summary>All replies up to and including the final one (ACK or an error).</summary>
    public async Task<List<(uint Type, byte[] Data)>> ReadOptionRepliesAsync(uint option)
    {
        var replies = new List<(uint, byte[])>();
        while (true)
        {
            var reply = await ReadOptionReplyAsync(option);
            replies.Add(reply);
            if (reply.Type == 1 || (reply.Type & 0x80000000) != 0)
                return replies;
        }
    }

    public static byte[] NameAndInfoRequests(string export, params ushort[] infos)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var b = new byte[4 + name.Length + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)name.Length);
        name.CopyTo(b, 4);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + name.Length), (ushort)infos.Length);
        for (var i = 0; i < infos.Length; i++)
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + name.Length + 2 + (2 * i)), infos[i]);
        return b;
    }

    public static byte[] MetaQueries(string export, params string[] queries)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var encoded = queries.Select(Encoding.UTF8.GetBytes).ToList();
        var b = new byte[4 + name.Length + 4 + encoded.Sum(q => 4 + q.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)name.Length);
        name.CopyTo(b, 4);
        var p = 4 + name.Length;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(p), (uint)encoded.Count);
        p += 4;
        foreach (var q in encoded)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(p), (uint)q.Length);
            q.CopyTo(b, p + 4);
            p += 4 + q.Length;
        }
        return b;
    }

    /// <summary>Structured replies (optional), then GO on <paramref name="export"/>; returns the export's size and flags.</summary>
    public async Task<(ulong Size, ushort Flags)> GoAsync(string export, bool structured = true, params string[] contexts)
    {
        if (structured)
        {
            await SendOptionAsync(8, []);
            Assert.Equal(1u, (await ReadOptionReplyAsync(8)).Type);
        }
        if (contexts.Length > 0)
        {
            await SendOptionAsync(10, MetaQueries(export, contexts));
            var replies = await ReadOptionRepliesAsync(10);
            Assert.Equal(1u, replies[^1].Type);
        }
        await SendOptionAsync(7, NameAndInfoRequests(export));
        ulong size = 0;
        ushort flags = 0;
        foreach (var (type, data) in await ReadOptionRepliesAsync(7))
        {
            Assert.True(type is 1 or 3, $"unexpected GO reply 0x{type:x}");
            if (type == 3 && BinaryPrimitives.ReadUInt16BigEndian(data) == 0)
            {
                size = BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                flags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
        }
        return (size, flags);
    }

    public Task SendRequestAsync(ushort flags, ushort type, ulong cookie, ulong offset, uint length, byte[]? payload = null) =>
        WriteAsync(Request(flags, type, cookie, offset, length, payload));

    /// <summary>A transmission request as bytes (header and payload), for sending several in one write.</summary>
    public static byte[] Request(ushort flags, ushort type, ulong cookie, ulong offset, uint length, byte[]? payload = null)
    {
        var b = new byte[28 + (payload?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(b, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        payload?.CopyTo(b, 28);
        return b;
    }

    /// <summary>A simple reply header: (error, cookie).</summary>
    public async Task<(uint Error, ulong Cookie)> ReadSimpleReplyAsync()
    {
        var h = await ReadAsync(16);
        Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(h));
        return (BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)));
    }

    /// <summary>One structured chunk: (flags, type, cookie, payload).</summary>
    public async Task<(ushort Flags, ushort Type, ulong Cookie, byte[] Payload)> ReadChunkAsync()
    {
        var h = await ReadAsync(20);
        Assert.Equal(0x668e33efu, BinaryPrimitives.ReadUInt32BigEndian(h));
        var length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return (BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(4)), BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6)),
            BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)), await ReadAsync((int)length));
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes; a reply that never comes fails the test instead of hanging it.</summary>
    public async Task<byte[]> ReadAsync(int count)
    {
        var b = new byte[count];
        await _stream.ReadExactlyAsync(b).AsTask().WaitAsync(TimeSpan.FromSeconds(60));
        return b;
    }

    /// <summary>True when the server closed the connection (reads hit end of stream or a reset).</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var b = new byte[1];
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            return await _stream.ReadAsync(b, timeout.Token) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>
    /// Waits until the server has read every byte sent so far (a Unix socket's SIOCOUTQ counts what
    /// the peer has not received yet), so the next write reaches it as a piece of its own.
    /// </summary>
    public async Task WaitUntilServerReadAllAsync()
    {
        Assert.Equal(AddressFamily.Unix, _socket.AddressFamily);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (Unsent() > 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the server did not read what was sent");
            await Task.Yield();
        }
    }

    private int Unsent()
    {
        const ulong SiocOutq = 0x5411; // TIOCOUTQ
        Assert.Equal(0, Ioctl((int)_socket.Handle, SiocOutq, out var unsent));
        return unsent;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static extern int Ioctl(int fd, ulong request, out int value);

    public void Abort() => _socket.Close(0);

    public ValueTask DisposeAsync() => _stream.DisposeAsync();
}
