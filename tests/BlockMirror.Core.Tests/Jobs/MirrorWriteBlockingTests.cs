using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Active mirroring (qemu-semantics d.5, iotest 151).</summary>
public sealed class MirrorWriteBlockingTests : IAsyncLifetime
{
    private const long Size = 32L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    /// <summary>Random unaligned writes until stopped; the model is updated after each write returns.</summary>
    private static async Task WriterAsync(BlockNode node, byte[] model, int seed, long from, long to, CancellationToken stop)
    {
        var random = new Random(seed);
        while (!stop.IsCancellationRequested)
        {
            var len = random.Next(1, 300_000);
            var off = random.NextInt64(from, to - len);
            var data = new byte[len];
            random.NextBytes(data);
            if (random.Next(8) == 0)
            {
                await node.WriteAsync(WriteRequest.ForZeroes(off, len, mayUnmap: true));
                Array.Clear(model, (int)off, len);
                continue;
            }
            await node.WriteAsync(off, data);
            data.CopyTo(model, off);
        }
    }

    [Fact]
    public async Task Continuous_writer_stays_in_sync_and_target_equals_source()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 21);
        using var stop = new CancellationTokenSource();
        // Two writers on disjoint halves, so the model stays exact.
        var modelLow = model;
        var writers = Task.WhenAll(
            Task.Run(() => WriterAsync(src, modelLow, 1, 0, Size / 2, stop.Token)),
            Task.Run(() => WriterAsync(src, modelLow, 2, Size / 2, Size, stop.Token)));

        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking, BufSize = 1 << 20,
        });
        await _f.WaitReadyAsync("job0");
        Assert.True(job.ActivelySynced);
        Assert.True(job.GetInfo().ActivelySynced);
        Assert.Equal("write-blocking", job.GetInfo().CopyMode);

        // In sync, writes stay in sync: nothing is left dirty behind them.
        await stop.CancelAsync();
        await writers;
        Assert.True(job.ActivelySynced);
        Assert.Equal(0, job.WorkingBitmap.Count);

        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Write_after_sync_is_on_the_target_when_it_returns()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 22);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking });
        await _f.WaitReadyAsync("job0");

        // Unaligned, crossing granules, on clean granules.
        var data = new byte[200_000];
        new Random(5).NextBytes(data);
        await src.WriteAsync(1_000_042, data);
        var onTarget = new byte[data.Length];
        await dst.Image.ReadAsync(1_000_042, onTarget);
        Assert.Equal(data, onTarget);
        await _f.Layer.CancelJobAsync("job0", force: true);
        await _f.WaitEndAsync("job0");
    }

    [Fact]
    public async Task Unaligned_write_on_a_dirty_granule_leaves_it_to_the_background_copy()
    {
        // iotest 151 testUnalignedActiveIO: a very slow job, one byte written, then set-speed 0.
        var src = await _f.CreateRawAsync("src", 2L << 20);
        await _f.CreateRawAsync("dst", 2L << 20);
        var model = new byte[2L << 20];
        await MirrorFixture.WritePatternAsync(src, model, 0x01, 0, 2 << 20);
        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking, BufSize = 262144, Speed = 1,
        });
        await MirrorFixture.WritePatternAsync(src, model, 0x02, (1 << 20) + 42, 1);
        Assert.False(job.ActivelySynced);
        await _f.Layer.SetJobSpeedAsync("job0", 0);
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Overlapping_active_writes_do_not_deadlock()
    {
        var src = await _f.CreateRawAsync("src", 4L << 20);
        await _f.CreateRawAsync("dst", 4L << 20);
        var model = new byte[4L << 20];
        await MirrorFixture.WritePatternAsync(src, model, 0x01, 0, 4 << 20);
        await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking, Speed = 1,
        });
        var a = new byte[1 << 20];
        var b = new byte[2 << 20];
        var c = new byte[2 << 20];
        Array.Fill(a, (byte)0xa);
        Array.Fill(b, (byte)0xb);
        Array.Fill(c, (byte)0xc);
        await Task.WhenAll(src.WriteAsync(0, a).AsTask(), src.WriteAsync(0, b).AsTask(), src.WriteAsync(0, c).AsTask());
        var final = new byte[2 << 20];
        await src.ReadAsync(0, final);
        final.CopyTo(model, 0);
        await _f.Layer.SetJobSpeedAsync("job0", 0);
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        await _f.WaitEndAsync("job0");
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Change_switches_background_to_write_blocking_only()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 23);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        Assert.False(job.ActivelySynced);

        var back = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("job0", MirrorCopyMode.Background));
        Assert.Equal("copy-mode-change", back.Code);
        Assert.Equal("Change to copy mode 'background' is not implemented", back.Message);

        await _f.Layer.ChangeJobAsync("job0", MirrorCopyMode.WriteBlocking);
        Assert.Equal(MirrorCopyMode.WriteBlocking, job.CopyMode);
        var twice = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ChangeJobAsync("job0", MirrorCopyMode.WriteBlocking));
        Assert.Equal("copy-mode-change", twice.Code);
        Assert.Equal("Expected current copy mode 'background', got 'write-blocking'", twice.Message);

        // A synchronous write is on the target when it returns.
        await src.WriteAsync(4096, new byte[] { 1, 2, 3, 4 });
        var onTarget = new byte[4];
        await dst.Image.ReadAsync(4096, onTarget);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, onTarget);
        await _f.Layer.CancelJobAsync("job0", force: true);
        await _f.WaitEndAsync("job0");
    }

    [Fact]
    public async Task Target_error_on_an_active_write_redirties_and_the_write_succeeds()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (dst, image) = await _f.CreateFaultyAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 24);
        var job = await _f.StartAsync(new MirrorOptions
        {
            Id = "job0", Device = "src", Target = "dst", CopyMode = MirrorCopyMode.WriteBlocking,
            OnTargetError = BlockdevOnError.Ignore,
        });
        await _f.WaitReadyAsync("job0");
        Assert.True(job.ActivelySynced);

        image.Arm(failWrite: n => n == 1);
        var mark = _f.Events.Count;
        await MirrorFixture.WritePatternAsync(src, model, 0x77, 3 * 65536, 65536);
        var error = await _f.Events.WaitAfterAsync(mark, e => e.Name == "BLOCK_JOB_ERROR");
        Assert.Equal("write", error.Str("operation"));
        Assert.Equal("ignore", error.Str("action"));

        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
        Assert.Same(image, src.Image);
    }
}
