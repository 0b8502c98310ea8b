using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A qcow2 mirror target written only by its job keeps its metadata in the cache while the job owns it
/// (its copies need not survive a kill -9 one by one: the job flushes before READY and the pivot), and
/// writes it through again before anyone else may write it: after a pivot (the device's clients) and
/// after a cancel (the node is free, and the caller's bitmap is stored with the job's clears).
/// </summary>
public sealed class MirrorQcow2TargetWriteThroughTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private const int Length = 256 << 10;
    private const long Region = 6L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task The_target_defers_its_metadata_while_the_job_owns_it_and_maps_every_copy_once_force_cancelled()
    {
        var (src, dst) = await CreatePairAsync();
        await _f.StartAsync(new MirrorOptions { Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking });
        await _f.WaitReadyAsync("src");
        // Write-blocking: acknowledged only once copied, so the target's cache now links the region.
        var data = Pattern(7);
        await src.WriteAsync(Region, data);
        Assert.False(((IMetadataCachingImage)dst.Image).MetadataWriteThrough);
        // What a kill -9 would leave: the flush before READY is in the file, this copy not yet.
        Assert.Equal(new byte[Length], await ReadKilledCopyAsync(dst, "during.qcow2"));

        await _f.Layer.CancelJobAsync("src", force: true);
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("src")).Name);

        Assert.True(((IMetadataCachingImage)dst.Image).MetadataWriteThrough);
        Assert.Equal(data, await ReadKilledCopyAsync(dst, "after-cancel.qcow2"));
        // A client writes the freed node as any other: written through.
        var later = Pattern(9);
        await dst.WriteAsync(Region - Length, later);
        Assert.Equal(later, await ReadKilledCopyAsync(dst, "after-write.qcow2", Region - Length));
    }

    [Fact]
    public async Task After_a_pivot_the_device_writes_its_qcow2_image_through()
    {
        var (src, _) = await CreatePairAsync();
        await _f.StartAsync(new MirrorOptions { Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("src");
        await _f.Layer.CompleteJobAsync("src");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("src")).Name);

        Assert.Equal("dst.qcow2", src.Path);
        Assert.True(((IMetadataCachingImage)src.Image).MetadataWriteThrough);
        var data = Pattern(5);
        await src.WriteAsync(Region, data);
        Assert.Equal(data, await ReadKilledCopyAsync(src, "after-pivot.qcow2"));
    }

    private async Task<(BlockNode Src, BlockNode Dst)> CreatePairAsync()
    {
        var src = await _f.CreateRawAsync("src", Size);
        // Data below the region only: the region is a hole the mirror leaves unallocated in the target.
        var head = new byte[2 << 20];
        new Random(3).NextBytes(head);
        await src.WriteAsync(0, head);
        var dst = await _f.Layer.CreateNodeAsync(new NodeSpec("dst", "qcow2", "dst.qcow2", null, Size, false));
        Assert.True(((IMetadataCachingImage)dst.Image).MetadataWriteThrough);
        return (src, dst);
    }

    /// <summary>Reads the region from a copy of the node's file as it is now (its pages, without the image's caches).</summary>
    private async Task<byte[]> ReadKilledCopyAsync(BlockNode node, string copyName, long offset = Region)
    {
        var copy = _f.FullPath(copyName);
        File.Copy(_f.FullPath(node.Path!), copy);
        await using var image = Qcow2Image.Open(copy, readOnly: true);
        var back = new byte[Length];
        await image.ReadAsync(offset, back);
        return back;
    }

    private static byte[] Pattern(int seed)
    {
        var data = new byte[Length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
