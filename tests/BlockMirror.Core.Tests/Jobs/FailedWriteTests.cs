using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;
using BlockMirror.Nbd;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Issue 10.3: a write, zero write or discard that fails part-way has changed the image, so every
/// bitmap that records writes must record it, as QEMU's bdrv_co_write_req_finish does whatever the
/// result; on every door (the node's write path the HTTP endpoints use, NBD, a mirror's filter in
/// both copy modes, and the mirror's own writes to its target). The image under test applies the
/// first granule of the range and then fails.
/// </summary>
public sealed class FailedWriteTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private const int G = 65536;
    // Unaligned at both ends, six granules (3 to 8); the first 64 KiB of it reach the image.
    private const long Offset = 3 * G + 100;
    private const int Length = 5 * G;

    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    private static WriteRequest Request(WriteKind kind, long offset = Offset, int length = Length) => kind switch
    {
        WriteKind.Write => WriteRequest.ForData(offset, Pattern(length, 0x5a)),
        WriteKind.WriteZeroes => WriteRequest.ForZeroes(offset, length, mayUnmap: true),
        _ => WriteRequest.ForDiscard(offset, length),
    };

    private static byte[] Pattern(int length, byte seed)
    {
        var data = new byte[length];
        for (var i = 0; i < length; i++)
            data[i] = (byte)(seed + i * 13 + (i >> 10));
        return data;
    }

    /// <summary>A node on a failing image, filled with data (so zeroes and discards change it) and returned with its content.</summary>
    private async Task<(BlockNode Node, FaultInjectingImage Image, byte[] Model)> FaultyFilledAsync(string name)
    {
        var (node, image) = await _f.CreateFaultyAsync(name, Size);
        var model = Pattern((int)Size, 0x11);
        await node.WriteAsync(0, model);
        return (node, image, model);
    }

    /// <summary>Every following write, zero write and discard applies its first granule and fails.</summary>
    private static void FailPartWay(FaultInjectingImage image)
    {
        image.AppliedBeforeFailure = G;
        image.FailWrite = _ => true;
        image.FailDiscard = _ => true;
    }

    private static void Heal(FaultInjectingImage image)
    {
        image.FailWrite = null;
        image.FailDiscard = null;
    }

    private Task AddBitmapAsync(string node, string name, long granularity, bool persistent = false, bool disabled = false) =>
        _f.Layer.BitmapActionAsync(new BitmapAddAction(node, name, granularity, persistent, disabled));

    /// <summary>Asserts that every granule of [offset, offset+length) is dirty in <paramref name="bitmap"/>.</summary>
    private static void AssertCovers(DirtyBitmap bitmap, long offset, long length)
    {
        var first = offset / bitmap.Granularity * bitmap.Granularity;
        for (var at = first; at < offset + length; at += bitmap.Granularity)
            Assert.True(bitmap.IsDirty(at), $"{bitmap.Name}: granule at {at} of the failed range [{offset}, +{length}) is clean");
    }

    /// <summary>The image holds the first granule of the request and the old bytes after it.</summary>
    private static async Task AssertAppliedPartAsync(FaultInjectingImage image, byte[] model, WriteRequest request)
    {
        var expected = (byte[])model.Clone();
        var applied = expected.AsSpan((int)request.Offset, G);
        if (request.Kind == WriteKind.Write)
            request.Data.Span[..G].CopyTo(applied);
        else
            applied.Clear();
        MirrorFixture.AssertSame(expected, await MirrorFixture.ReadAllAsync(image));
    }

    [Theory]
    [InlineData(WriteKind.Write)]
    [InlineData(WriteKind.WriteZeroes)]
    [InlineData(WriteKind.Discard)]
    public async Task A_failed_request_on_the_node_marks_every_recording_bitmap(WriteKind kind)
    {
        var (node, image, model) = await FaultyFilledAsync("disk");
        await AddBitmapAsync("disk", "b4k", 4096);
        await AddBitmapAsync("disk", "p", G, persistent: true);
        await AddBitmapAsync("disk", "off", G, disabled: true);
        FailPartWay(image);

        var request = Request(kind);
        await Assert.ThrowsAnyAsync<IOException>(() => node.WriteAsync(request).AsTask());

        await AssertAppliedPartAsync(image, model, request);
        AssertCovers(node.GetBitmap("b4k"), Offset, Length);
        AssertCovers(node.GetBitmap("p"), Offset, Length);
        Assert.Equal(6 * G, node.GetBitmap("p").Count);
        Assert.Equal(0, node.GetBitmap("off").Count);
    }

    [Theory]
    [InlineData(WriteKind.Write)]
    [InlineData(WriteKind.WriteZeroes)]
    [InlineData(WriteKind.Discard)]
    public async Task A_failed_nbd_request_marks_the_bitmaps(WriteKind kind)
    {
        var (node, image, model) = await FaultyFilledAsync("disk");
        await AddBitmapAsync("disk", "b0", G);
        await _f.Layer.AddExportAsync("disk", "disk", writable: true, []);
        await using var server = new NbdServer(_f.Layer, new NbdServerOptions { Listen = NbdListenAddress.Tcp("127.0.0.1", 0) });
        await server.StartAsync();
        var port = ((System.Net.IPEndPoint)server.LocalEndPoint).Port;
        await using var client = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd://127.0.0.1:{port}/disk"));
        FailPartWay(image);

        var request = Request(kind);
        var failed = kind switch
        {
            WriteKind.Write => client.WriteAsync(Offset, request.Data).AsTask(),
            WriteKind.WriteZeroes => client.WriteZeroesAsync(Offset, Length).AsTask(),
            _ => client.TrimAsync(Offset, Length).AsTask(),
        };
        await Assert.ThrowsAsync<NbdException>(() => failed);

        await AssertAppliedPartAsync(image, model, request);
        AssertCovers(node.GetBitmap("b0"), Offset, Length);
    }

    /// <summary>
    /// A mirror in either mode: the failed request's first granule changed the source, so the job
    /// must copy the range (before, a background mirror then completed with a target that differed
    /// there, and a write-blocking one neither copied nor marked it). The device's own bitmap records it too.
    /// </summary>
    [Theory]
    [InlineData(MirrorCopyMode.Background, WriteKind.Write)]
    [InlineData(MirrorCopyMode.Background, WriteKind.WriteZeroes)]
    [InlineData(MirrorCopyMode.Background, WriteKind.Discard)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.Write)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.WriteZeroes)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.Discard)]
    public async Task A_failed_request_on_a_mirrored_device_still_reaches_the_target(MirrorCopyMode mode, WriteKind kind)
    {
        var (src, image, _) = await FaultyFilledAsync("src");
        var dst = await _f.CreateRawAsync("dst", Size);
        await AddBitmapAsync("src", "b0", G);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", CopyMode = mode });
        await _f.WaitReadyAsync("job0");
        Assert.Equal(0, job.WorkingBitmap.Count);

        FailPartWay(image);
        await Assert.ThrowsAnyAsync<IOException>(() => src.WriteAsync(Request(kind)).AsTask());
        Heal(image);
        AssertCovers(src.GetBitmap("b0"), Offset, Length);

        // A soft cancel in ready converges first: the target is a point-in-time copy of the source.
        await _f.Layer.CancelJobAsync("job0", force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(image), await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// The mirror's own writes to its target: one that fails part-way (the job stops on it) has
    /// changed the target, so the target's bitmap records it; resumed, the job brings the target to
    /// the source. Background: the copy loop's write (data, or zeroes for a discarded range);
    /// write-blocking: the synchronous copy of the guest's request.
    /// </summary>
    [Theory]
    [InlineData(MirrorCopyMode.Background, WriteKind.Write)]
    [InlineData(MirrorCopyMode.Background, WriteKind.Discard)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.Write)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.WriteZeroes)]
    [InlineData(MirrorCopyMode.WriteBlocking, WriteKind.Discard)]
    public async Task A_failed_write_of_the_mirror_to_its_target_marks_the_target_bitmap(MirrorCopyMode mode, WriteKind kind)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (dst, image, _) = await FaultyFilledAsync("dst");
        await src.WriteAsync(0, await MirrorFixture.ReadAllAsync(image));
        await AddBitmapAsync("dst", "t", G);
        // sync none: both hold the same bytes, and the job copies only what is written from now on.
        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None, CopyMode = mode, OnTargetError = BlockdevOnError.Stop,
        });
        await _f.WaitReadyAsync("job0");
        Assert.Equal(0, dst.GetBitmap("t").Count);

        FailPartWay(image);
        await src.WriteAsync(Request(kind));
        // Stopped while ready: standby (QEMU's job_pause_point), io-status failed.
        await _f.Events.WaitForStatusAsync("job0", "standby");
        Assert.Equal(IoStatus.Failed, job.IoStatus);
        AssertCovers(dst.GetBitmap("t"), Offset, G);

        Heal(image);
        var resumedAt = _f.Events.Count;
        await _f.Layer.ResumeJobAsync("job0");
        await _f.Events.WaitAfterAsync(resumedAt, e => e.Name == "JOB_STATUS_CHANGE" && e.Str("id") == "job0" && e.Str("status") == "ready");
        await _f.Layer.CancelJobAsync("job0", force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        AssertCovers(dst.GetBitmap("t"), Offset, Length);
        MirrorFixture.AssertSame(await MirrorFixture.ReadAllAsync(src.Image), await MirrorFixture.ReadAllAsync(image));
    }
}
