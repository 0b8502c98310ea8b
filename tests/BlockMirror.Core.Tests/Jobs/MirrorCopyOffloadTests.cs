using System.Runtime.CompilerServices;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Tests.State;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Issue 15 item 4: a mirror between two raw files lets the kernel copy (copy_file_range), through
/// the target's write path; where the kernel refuses the pair the job reads and writes, and stops
/// asking. Whichever path copies, the target ends equal to the device, holes stay holes, the
/// target's bitmaps record the job's writes and errors follow the job's policy.
/// </summary>
public sealed class MirrorCopyOffloadTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private const int G = 65536;
    private readonly MirrorFixture _f = new();
    private readonly List<string> _immutable = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_immutable.Count > 0)
            Chattr.SetImmutable(false, [.. _immutable]);
        await _f.DisposeAsync();
    }

    /// <summary>Refuses every copy offload of <paramref name="node"/>'s image with the errno, and counts the attempts.</summary>
    private static StrongBox<int> Refuse(BlockNode node, int errno)
    {
        var attempts = new StrongBox<int>();
        ((RawFileImage)node.Image).CopyRangeFault = () =>
        {
            Interlocked.Increment(ref attempts.Value);
            return errno;
        };
        return attempts;
    }

    private async Task SoftCancelAsync(string id)
    {
        await _f.Layer.CancelJobAsync(id, force: false);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync(id)).Name);
    }

    private static async Task<List<ImageExtent>> ExtentsAsync(IBlockImage image)
    {
        var list = new List<ImageExtent>();
        await foreach (var e in ImageExtents.EnumerateAsync(image, 0, image.Size, CancellationToken.None))
            list.Add(e);
        return list;
    }

    /// <summary>
    /// A full mirror onto a target full of other data: the data is copied by the kernel, and every
    /// hole of the device is punched on the target (never copied), with or without offload.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Full_mirror_matches_and_keeps_holes_with_either_path(bool offload)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 151);
        await MirrorFixture.WritePatternAsync(dst, new byte[Size], 0x5a, 0, (int)Size);
        var attempts = offload ? null : Refuse(dst, LibC.EXDEV);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");

        Assert.Equal(!offload, job.CopyOffloadRefused);
        if (offload)
            Assert.True(job.BytesCopiedInKernel > 0);
        else
            Assert.Equal(0, job.BytesCopiedInKernel);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
        foreach (var hole in (await ExtentsAsync(src.Image)).Where(e => e.Kind == ExtentKind.Zero))
        {
            var there = await dst.Image.GetBlockStatusAsync(hole.Offset, hole.Length);
            Assert.Equal(new ImageExtent(hole.Offset, hole.Length, ExtentKind.Zero), there);
        }
        if (attempts is not null)
            Assert.True(attempts.Value >= 1);
    }

    /// <summary>
    /// Readahead into holes (bench/README): the kernel's copy of each extent of a sparse device
    /// reads exactly that extent, so after the mirror the device's page cache holds its data and
    /// not one page of its holes. Before, the copy's reads looked sequential and the readahead they
    /// started ran on into the hole after every extent: 3 GiB of page cache for 1 GiB of data.
    /// </summary>
    [Ext4Fact]
    public async Task The_kernel_copy_of_a_sparse_device_reads_its_data_and_none_of_its_holes()
    {
        const int MiB = 1 << 20;
        const long size = 96L * MiB;
        var src = await _f.CreateRawAsync("src", size);
        var dst = await _f.CreateRawAsync("dst", size);
        var model = new byte[size];
        var extents = new List<long>();
        for (long off = 2 * MiB; off + MiB <= size; off += 6 * MiB)
        {
            new Random((int)(off / MiB)).NextBytes(model.AsSpan((int)off, MiB));
            await src.WriteAsync(off, model.AsMemory((int)off, MiB));
            extents.Add(off);
        }
        await src.Image.FlushAsync();
        var path = _f.FullPath("src.img");
        PageCache.Evict(path);
        Assert.DoesNotContain(true, PageCache.Resident(path));

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");

        Assert.Equal(extents.Count * (long)MiB, job.BytesCopiedInKernel);
        var resident = PageCache.Resident(path);
        const int pagesPerMiB = MiB / 4096;
        var dataPages = extents.Sum(off => resident.AsSpan((int)(off / 4096), pagesPerMiB).Count(true));
        var holePages = resident.Count(r => r) - dataPages;
        Assert.Equal(extents.Count * pagesPerMiB, dataPages); // the copy read through the cache: mincore sees it
        Assert.Equal(0, holePages);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// The same for an incremental copy of a fully allocated device: the kernel's copy of each
    /// scattered dirty granule reads that granule, not the clean data after it. Before, readahead
    /// ran on from every granule: 10 MiB of dirty granules read 43 MiB of a 1 GiB image.
    /// </summary>
    [Ext4Fact]
    public async Task The_kernel_copy_of_dirty_granules_reads_them_and_none_of_the_clean_data()
    {
        const long size = 64L << 20;
        var src = await _f.CreateRawAsync("src", size);
        var dst = await _f.CreateRawAsync("dst", size);
        var model = new byte[size];
        new Random(17).NextBytes(model);
        await src.WriteAsync(0, model);
        await dst.WriteAsync(0, model);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "inc", G, persistent: false, disabled: false));
        var granules = new SortedSet<long>();
        var random = new Random(18);
        while (granules.Count < 12)
            granules.Add(random.NextInt64(1, size / G) * G); // never granule 0: nothing is before it
        foreach (var at in granules)
        {
            random.NextBytes(model.AsSpan((int)at, G));
            await src.WriteAsync(at, model.AsMemory((int)at, G));
        }
        await src.Image.FlushAsync();
        var path = _f.FullPath("src.img");
        PageCache.Evict(path);
        Assert.DoesNotContain(true, PageCache.Resident(path));

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Bitmap = "inc", BitmapMode = BitmapMode.OnSuccess });
        await _f.WaitReadyAsync("job0");

        var copied = job.BytesCopiedInKernel;
        var resident = PageCache.Resident(path);
        const int pagesPerGranule = G / 4096;
        var dirtyPages = granules.Sum(at => resident.AsSpan((int)(at / 4096), pagesPerGranule).Count(true));
        var cleanPages = resident.Count(r => r) - dirtyPages;
        Assert.Equal(granules.Count * (long)G, copied);
        Assert.Equal(granules.Count * pagesPerGranule, dirtyPages);
        Assert.Equal(0, cleanPages);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// Zero detection stays with the kernel's copy: a chunk of allocated zeroes becomes a hole on the
    /// target, never data; a chunk that starts with zeroes and holds data further on is data.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Allocated_zeroes_are_not_copied_as_data_with_either_path(bool offload)
    {
        const int MiB = 1 << 20;
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(9).NextBytes(model.AsSpan(10 * MiB, MiB));
        new Random(10).NextBytes(model.AsSpan(6 * MiB + 8192, MiB - 8192));
        await src.WriteAsync(4 * MiB, new byte[MiB]); // allocated zeroes
        await src.WriteAsync(6 * MiB, model.AsMemory(6 * MiB, MiB)); // zeroes first, data after
        await src.WriteAsync(10 * MiB, model.AsMemory(10 * MiB, MiB));
        if (!offload)
            Refuse(dst, LibC.EXDEV);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");

        // The chunk that starts with zeroes was read whole to tell, and so written from the buffer.
        Assert.Equal(offload ? MiB : 0, job.BytesCopiedInKernel);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
        Assert.Equal(new ImageExtent(4 * MiB, MiB, ExtentKind.Zero), await dst.Image.GetBlockStatusAsync(4 * MiB, MiB));
        Assert.Equal(2L * MiB, dst.Image.AllocatedBytes);
    }

    /// <summary>
    /// An incremental mirror (the device's bitmap is the work list) copies only the dirty granules,
    /// and a bitmap on the target records exactly them, through the kernel's copy as through read
    /// and write: the copy is a write on the target's write path.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Incremental_mirror_copies_the_dirty_granules_and_the_target_bitmap_records_them(bool offload)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(5).NextBytes(model);
        await src.WriteAsync(0, model);
        await dst.WriteAsync(0, model);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "inc", G, persistent: false, disabled: false));
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("dst", "t", G, persistent: false, disabled: false));
        var random = new Random(6);
        for (var i = 0; i < 24; i++)
        {
            var piece = new byte[random.Next(1, 3 * G)];
            random.NextBytes(piece);
            var at = random.NextInt64(0, Size - piece.Length);
            await src.WriteAsync(at, piece);
            piece.CopyTo(model, at);
        }
        var dirty = src.GetBitmap("inc").GetExtents(0, Size);
        var dirtyBytes = src.GetBitmap("inc").Count;
        if (!offload)
            Refuse(dst, LibC.EOPNOTSUPP);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Bitmap = "inc", BitmapMode = BitmapMode.OnSuccess });
        await _f.WaitReadyAsync("job0");

        Assert.Equal(offload ? dirtyBytes : 0, job.BytesCopiedInKernel);
        Assert.Equal(dirtyBytes, job.GetInfo().BytesCopied);
        Assert.Equal(dirty, dst.GetBitmap("t").GetExtents(0, Size));
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
        Assert.Equal(0, src.GetBitmap("inc").Count);
    }

    /// <summary>
    /// Each errno that means "not for this pair" makes the job read and write, and it asks the
    /// kernel only once (all data and a buffer of one chunk: one chunk in flight at a time, so exactly once).
    /// </summary>
    [Theory]
    [InlineData(LibC.EXDEV)]
    [InlineData(LibC.EINVAL)]
    [InlineData(LibC.EOPNOTSUPP)]
    [InlineData(LibC.ENOSYS)]
    public async Task A_refusal_falls_back_to_read_and_write_and_is_not_asked_again(int errno)
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(errno).NextBytes(model);
        await src.WriteAsync(0, model);
        var attempts = Refuse(dst, errno);

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", BufSize = 1L << 20 });
        await _f.WaitReadyAsync("job0");

        Assert.Equal(1, attempts.Value);
        Assert.True(job.CopyOffloadRefused);
        Assert.Equal(0, job.BytesCopiedInKernel);
        Assert.Empty(_f.Events.Named("BLOCK_JOB_ERROR"));
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// An I/O error from the kernel's copy is no refusal: that chunk is read and written (which
    /// succeeds here, so no error policy is involved), and the next chunks are offered to the kernel again.
    /// </summary>
    [Fact]
    public async Task An_io_error_of_the_kernel_copy_retries_that_chunk_by_read_and_write_only()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(7).NextBytes(model);
        await src.WriteAsync(0, model);
        var calls = 0;
        ((RawFileImage)dst.Image).CopyRangeFault = () => Interlocked.Increment(ref calls) == 1 ? 5 /* EIO */ : 0;

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", BufSize = 1L << 20 });
        await _f.WaitReadyAsync("job0");

        Assert.False(job.CopyOffloadRefused);
        Assert.Equal(Size - job.ChunkMax, job.BytesCopiedInKernel);
        Assert.Empty(_f.Events.Named("BLOCK_JOB_ERROR"));
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>
    /// A target on another file system (tmpfs at /dev/shm, the device in the temp directory): the
    /// kernel itself answers EXDEV, and the job reads and writes.
    /// </summary>
    [OtherFileSystemFact]
    public async Task A_target_on_another_file_system_is_refused_by_the_kernel()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 153);
        var path = Path.Combine(OtherFileSystemFactAttribute.Directory, $"blockmirror-offload-{Guid.NewGuid():N}.img");
        try
        {
            _f.Opener.Register("fault://dst", RawFileImage.Create(path, Size));
            var dst = await _f.Layer.CreateNodeAsync(new NodeSpec("dst", "nbd", null, "fault://dst", null, false));

            var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
            await _f.WaitReadyAsync("job0");

            Assert.True(job.CopyOffloadRefused);
            Assert.Equal(0, job.BytesCopiedInKernel);
            await SoftCancelAsync("job0");
            MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
            await _f.Layer.DeleteNodeAsync("dst", deleteImage: false);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// The target becomes immutable half-way through the kernel's copy (a real EPERM from
    /// copy_file_range, then from pwrite): on-target-error=stop pauses the job with io-status
    /// failed, a resume after the target is writable again finishes the copy in the kernel.
    /// </summary>
    [ChattrFact]
    public async Task A_target_failing_half_way_follows_on_target_error_stop()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = new byte[Size];
        new Random(8).NextBytes(model);
        await src.WriteAsync(0, model);
        var target = _f.FullPath("dst.img");
        var calls = 0;
        ((RawFileImage)dst.Image).CopyRangeFault = () =>
        {
            if (Interlocked.Increment(ref calls) == 4)
                MakeImmutable(target);
            return 0;
        };

        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", BufSize = 1L << 20, OnTargetError = BlockdevOnError.Stop,
        });
        await _f.Events.WaitForStatusAsync("job0", "paused");

        var error = Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR"));
        Assert.Equal("write", error.Str("operation"));
        Assert.Equal("stop", error.Str("action"));
        Assert.Equal("failed", job.GetInfo().IoStatus);
        Assert.InRange(job.BytesCopiedInKernel, 3 * job.ChunkMax, Size - job.ChunkMax);
        Assert.False(job.CopyOffloadRefused);

        Chattr.SetImmutable(false, target);
        _immutable.Clear();
        var before = job.BytesCopiedInKernel;
        await _f.Layer.ResumeJobAsync("job0");
        await _f.WaitReadyAsync("job0");
        Assert.True(job.BytesCopiedInKernel > before);
        await SoftCancelAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));
    }

    /// <summary>The same failure with on-target-error=report fails the job with the kernel's error.</summary>
    [ChattrFact]
    public async Task A_target_failing_half_way_follows_on_target_error_report()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.WritePatternAsync(src, new byte[Size], 0x33, 0, (int)Size);
        var target = _f.FullPath("dst.img");
        var calls = 0;
        ((RawFileImage)dst.Image).CopyRangeFault = () =>
        {
            if (Interlocked.Increment(ref calls) == 4)
                MakeImmutable(target);
            return 0;
        };

        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", BufSize = 1L << 20 });
        var end = await _f.WaitEndAsync("job0");

        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        // The error the read and write path met (pwrite's EPERM), as the job reports it without offload.
        Assert.False(string.IsNullOrEmpty(end.Str("error")));
        var error = Assert.Single(_f.Events.Named("BLOCK_JOB_ERROR"));
        Assert.Equal("write", error.Str("operation"));
        Assert.Equal("report", error.Str("action"));
        Assert.True(job.BytesCopiedInKernel >= 3 * job.ChunkMax);
    }

    private void MakeImmutable(string path)
    {
        Chattr.SetImmutable(true, path);
        lock (_immutable)
            _immutable.Add(path);
    }
}
