using System.Net.Sockets;
using System.Security.Cryptography;
using BlockMirror.Nbd;
using Xunit.Abstractions;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// Seeded hostile input against the NBD server: garbage handshakes, random options with lying
/// lengths, random commands (unknown types, bad flags, out-of-range and overflowing offsets,
/// oversized lengths, truncated payloads) on a read-only export, and abrupt disconnects at every
/// stage. Afterwards the server still serves, the read-only image is byte-for-byte unchanged and
/// no bitmap was dirtied.
/// </summary>
public sealed class NbdFuzzTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Hostile_clients_neither_crash_the_server_nor_change_a_read_only_export()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using (var setup = await server.ConnectAsync())
        {
            await setup.WriteAsync(65536, new byte[] { 1, 2, 3, 4 });
            await setup.FlushAsync();
        }
        var dirtyBefore = server.Disk.GetBitmap("b0").Sha256Hex();
        var before = SHA256.HashData(await File.ReadAllBytesAsync(server.ImagePath));
        var random = new Random(424242);
        var connections = 0;
        for (var i = 0; i < 400; i++)
        {
            connections++;
            try
            {
                await using var raw = await NbdRawConnection.OpenAsync(server.Server.LocalEndPoint);
                switch (random.Next(4))
                {
                    case 0:
                        await raw.WriteAsync(RandomBytes(random, random.Next(0, 200)));
                        break;
                    case 1:
                        await raw.StartAsync((uint)random.Next(0, 8));
                        for (var o = random.Next(1, 6); o > 0; o--)
                            await raw.WriteAsync(RandomOption(random));
                        break;
                    default:
                        await raw.StartAsync();
                        await raw.GoAsync("disk0-ro", structured: random.Next(2) == 0);
                        for (var c = random.Next(1, 20); c > 0; c--)
                            await SendRandomCommandAsync(raw, random);
                        break;
                }
                if (random.Next(3) == 0)
                    raw.Abort();
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                // The server closing a hostile connection is a correct answer.
            }
        }

        // The server still serves a well-behaved client, and nothing was changed.
        await using (var client = await server.ConnectAsync())
        {
            var buffer = new byte[4];
            await client.ReadAsync(65536, buffer);
            Assert.Equal(new byte[] { 1, 2, 3, 4 }, buffer);
        }
        Assert.Equal(before, SHA256.HashData(await File.ReadAllBytesAsync(server.ImagePath)));
        Assert.Equal(dirtyBefore, server.Disk.GetBitmap("b0").Sha256Hex());
        output.WriteLine($"nbd fuzz: {connections} hostile connections, server healthy, 0 bytes changed");
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var b = new byte[length];
        random.NextBytes(b);
        return b;
    }

    /// <summary>An option header with a random option and a length that may lie about the data that follows.</summary>
    private static byte[] RandomOption(Random random)
    {
        var data = RandomBytes(random, random.Next(0, 64));
        var b = new byte[16 + data.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(b, random.Next(5) == 0 ? (ulong)random.NextInt64() : NbdRawConnection.OptMagic);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), (uint)random.Next(0, 16));
        var claimed = random.Next(3) switch
        {
            0 => (uint)data.Length,
            1 => (uint)random.Next(0, 1 << 20),
            _ => uint.MaxValue,
        };
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), claimed);
        data.CopyTo(b, 16);
        return b;
    }

    private static Task SendRandomCommandAsync(NbdRawConnection raw, Random random)
    {
        var type = (ushort)random.Next(0, 12);
        var flags = (ushort)random.Next(0, 64);
        var offset = random.Next(4) switch
        {
            0 => (ulong)random.NextInt64(0, NbdTestServer.DiskSize),
            1 => NbdTestServer.DiskSize - (ulong)random.Next(0, 4096),
            2 => ulong.MaxValue - (ulong)random.Next(0, 4096),
            _ => (ulong)random.NextInt64(),
        };
        var length = random.Next(4) switch
        {
            0 => (uint)random.Next(0, 65536),
            1 => (uint)random.Next(0, 64 << 20),
            2 => uint.MaxValue,
            _ => 0u,
        };
        // Writes carry a payload that may be shorter than announced (the connection then stalls or closes).
        byte[]? payload = type == 1 ? RandomBytes(random, (int)Math.Min(length, (uint)random.Next(0, 70000))) : null;
        return raw.SendRequestAsync(flags, type, (ulong)random.NextInt64(), offset, length, payload);
    }
}
