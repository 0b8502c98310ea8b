using System.Runtime.InteropServices;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// I/O on the caller's thread (<see cref="IInlineIo"/>): what an NBD connection's thread does
/// instead of handing each small request to the thread pool.
/// </summary>
public sealed class RawFileImageInlineIoTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;
    private const int PosixFadvDontNeed = 4;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [DllImport("libc", EntryPoint = "posix_fadvise")]
    private static extern int PosixFadvise(int fd, long offset, long length, int advice);

    [Fact]
    public async Task TryReadCached_ReadsWhatThePageCacheHolds_AndHolesAsZeroes()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("a.raw"), MiB);
        var data = Pattern(64 * KiB, 1);
        await image.WriteAsync(4 * KiB, data);

        var back = new byte[64 * KiB];
        Assert.True(image.TryReadCached(4 * KiB, back));
        Assert.Equal(data, back);

        var hole = new byte[8 * KiB];
        hole.AsSpan().Fill(0xEE);
        Assert.True(image.TryReadCached(512 * KiB, hole));
        Assert.All(hole, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task TryReadCached_LeavesToReadAsync_WhatWouldWaitForTheDisk()
    {
        var path = _dir.PathOf("cold.raw");
        await using var image = RawFileImage.Create(path, 4 * MiB);
        var data = Pattern(MiB, 2);
        await image.WriteAsync(MiB, data);
        await image.FlushAsync();
        // Clean pages can be dropped; the next read then has to go to the device.
        Assert.Equal(0, PosixFadvise((int)image.Handle.DangerousGetHandle(), 0, 0, PosixFadvDontNeed));

        var back = new byte[MiB];
        var memoryBacked = new DriveInfo(path).DriveFormat == "tmpfs"; // tmpfs pages are the file: never dropped
        Assert.Equal(memoryBacked, image.TryReadCached(MiB, back));
        await image.ReadAsync(MiB, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task TryWriteInline_WritesAtOnce()
    {
        await using var image = RawFileImage.Create(_dir.PathOf("w.raw"), MiB);
        var data = Pattern(4 * KiB, 3);
        Assert.True(image.TryWriteInline(8 * KiB, data));
        var back = new byte[4 * KiB];
        await image.ReadAsync(8 * KiB, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task A_small_write_on_the_callers_thread_is_done_when_WriteAsync_returns_and_marks_the_bitmaps()
    {
        await using var layer = new BlockLayer(new ImageRoot(_dir.PathOf("root")), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System);
        await layer.CreateNodeAsync(new NodeSpec("n", "raw", "n.raw", null, MiB, false));
        await layer.BitmapActionAsync(new BitmapAddAction("n", "b", 64 * KiB, persistent: false, disabled: false));
        var node = layer.GetNode("n");
        var data = Pattern(4 * KiB, 4);

        var write = node.WriteAsync(WriteRequest.ForData(70 * KiB, data) with { OnCallerThread = true });

        // No thread-pool hop: the whole write path (gate, image, bitmaps) ran before WriteAsync returned.
        Assert.True(write.IsCompletedSuccessfully);
        await write;
        Assert.Equal([(64L * KiB, 64L * KiB)], node.GetBitmap("b").GetExtents(0, MiB));
        var back = new byte[4 * KiB];
        await node.ReadAsync(70 * KiB, back);
        Assert.Equal(data, back);
        Assert.True(node.TryReadCached(70 * KiB, back));
        Assert.Equal(data, back);
    }
}
