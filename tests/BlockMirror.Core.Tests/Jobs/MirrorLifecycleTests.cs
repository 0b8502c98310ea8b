using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Full mirrors, complete/pivot, cancel, sync none, auto-finalize/dismiss (qemu-semantics c.4, d.6, d.7).</summary>
public sealed class MirrorLifecycleTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _f.DisposeAsync();

    [Fact]
    public async Task Full_mirror_completes_and_pivots_the_device_onto_the_target()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 1);
        var oldPath = src.Path;

        var job = await _f.StartAsync(new MirrorOptions { Device = "src", Target = "dst" });
        Assert.Equal("src", job.Id);
        Assert.Equal(16L << 20, job.BufSize);
        Assert.Equal(65536, job.Granularity);
        Assert.Equal(1L << 20, job.ChunkMax);
        Assert.True(src.Busy);
        await _f.WaitReadyAsync("src");
        Assert.True(job.GetInfo().Ready);
        Assert.Equal(0, job.GetInfo().Remaining);

        await _f.Layer.CompleteJobAsync("src");
        var end = await _f.WaitEndAsync("src");
        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        Assert.False(end.Has("error"));
        await _f.Events.WaitForStatusAsync("src", "null");

        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded", "null"], await _f.StatusesAfterDismissAsync("src"));
        Assert.Single(_f.Events.Named("BLOCK_JOB_READY"));
        Assert.Null(_f.Layer.FindNode("dst"));
        Assert.Equal("dst.img", src.Path);
        Assert.False(src.Busy);
        Assert.Null(src.Filter);
        Assert.True(File.Exists(_f.FullPath(oldPath!)));
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
        // Zeroes and holes stay unallocated on the target.
        Assert.True(src.Image.AllocatedBytes <= model.Count(b => b != 0) + Size / 2);
        Assert.Equal("dst.img", _f.Store.NodesSnapshot()["src"].Path);
        Assert.False(_f.Store.NodesSnapshot().ContainsKey("dst"));

        // The job left the list and stays in history.
        Assert.Null(_f.Layer.FindJob("src"));
        var history = _f.Layer.GetJob("src", includeDismissed: true);
        Assert.Equal("concluded", history.GetInfo().Status);
        Assert.True(history.Dismissed);
        await Assert.ThrowsAsync<BlockException>(() => _f.Layer.PauseJobAsync("src"));

        // The device writes its new image now.
        await src.WriteAsync(0, new byte[] { 1, 2, 3 });
        var check = new byte[3];
        await src.ReadAsync(0, check);
        Assert.Equal(new byte[] { 1, 2, 3 }, check);
    }

    [Fact]
    public async Task Writes_before_during_and_after_ready_reach_the_target()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 2);
        var random = new Random(7);

        async Task WriteSomeAsync(int count)
        {
            for (var i = 0; i < count; i++)
            {
                var len = random.Next(1, 200_000);
                var off = random.NextInt64(0, Size - len);
                var data = new byte[len];
                random.NextBytes(data);
                if (i % 5 == 0)
                    Array.Clear(data);
                await src.WriteAsync(off, data);
                data.CopyTo(model, off);
            }
        }

        await WriteSomeAsync(20);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", BufSize = 1 << 20 });
        await WriteSomeAsync(50);
        await _f.WaitReadyAsync("job0");
        await WriteSomeAsync(50);
        await src.WriteAsync(WriteRequest.ForZeroes(3 << 20, 100_000, mayUnmap: true));
        Array.Clear(model, 3 << 20, 100_000);
        await src.WriteAsync(WriteRequest.ForDiscard(5 << 20, 1 << 20));
        Array.Clear(model, 5 << 20, 1 << 20);

        await _f.Layer.CompleteJobAsync("job0");
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Complete_converges_under_a_continuous_writer_and_loses_no_write()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 12);
        using var stop = new CancellationTokenSource();
        var writes = 0;
        var writer = Task.Run(async () =>
        {
            var random = new Random(12);
            while (!stop.IsCancellationRequested)
            {
                var len = random.Next(1, 100_000);
                var off = random.NextInt64(0, Size - len);
                var data = new byte[len];
                random.NextBytes(data);
                await src.WriteAsync(off, data);
                data.CopyTo(model, off);
                Interlocked.Increment(ref writes);
            }
        });

        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        var atPivot = Volatile.Read(ref writes);
        // The writer goes on on the device's new image; then everything it wrote is there.
        await _f.Events.WaitForStatusAsync("job0", "null");
        await stop.CancelAsync();
        await writer;
        Assert.True(writes >= atPivot);
        Assert.Equal("dst.img", src.Path);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
    }

    [Fact]
    public async Task Soft_cancel_in_ready_leaves_a_point_in_time_copy_without_pivot()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 3);

        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await MirrorFixture.WritePatternAsync(src, model, 0x5a, 12345, 70000);
        await _f.Layer.CancelJobAsync("job0", force: false);
        var end = await _f.WaitEndAsync("job0");

        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        Assert.False(end.Has("error"));
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded", "null"], await _f.StatusesAfterDismissAsync("job0"));
        Assert.Same(dst, _f.Layer.FindNode("dst"));
        Assert.Equal("src.img", src.Path);
        Assert.False(dst.Busy);
        Assert.Null(dst.Filter);
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(dst.Image));

        // After the job the target no longer follows the source, and can be written again.
        var snapshot = (byte[])model.Clone();
        await MirrorFixture.WritePatternAsync(src, model, 0x11, 0, 4096);
        MirrorFixture.AssertSame(snapshot, await MirrorFixture.ReadAllAsync(dst.Image));
        await dst.WriteAsync(0, new byte[] { 9 });
    }

    [Fact]
    public async Task Cancel_before_ready_is_a_force_cancel()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var (dst, image) = await _f.CreateFaultyAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 4);
        var firstWrite = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        image.Written = (_, _) => firstWrite.TrySetResult();

        // speed=1: the first chunk passes, then the job owes the limiter for days.
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Speed = 1, BufSize = 1 << 20 });
        await firstWrite.Task.WaitAsync(RecordingEventSink.Timeout);
        Assert.Equal(JobStatus.Running, job.Status);

        await _f.Layer.CancelJobAsync("job0", force: false);
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("BLOCK_JOB_CANCELLED", end.Name);
        Assert.Equal(["created", "running", "aborting", "concluded", "null"], await _f.StatusesAfterDismissAsync("job0"));
        Assert.Empty(_f.Events.Named("BLOCK_JOB_READY"));
        Assert.Equal("src.img", src.Path);
        Assert.False(src.Busy);
        Assert.False(dst.Busy);
        Assert.Null(src.Filter);
        // QEMU's job_update_rc: a force-cancelled job concludes with ECANCELED.
        Assert.Equal(Job.CanceledError, job.Error);
    }

    [Fact]
    public async Task Force_cancel_in_ready_is_cancelled_at_once()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 5);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CancelJobAsync("job0", force: true);
        var end = await _f.WaitEndAsync("job0");
        Assert.Equal("BLOCK_JOB_CANCELLED", end.Name);
        Assert.Equal(["created", "running", "ready", "aborting", "concluded", "null"], await _f.StatusesAfterDismissAsync("job0"));
        Assert.NotNull(_f.Layer.FindNode("dst"));
    }

    [Fact]
    public async Task Sync_none_copies_only_new_writes()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 6);
        var expected = new byte[Size];

        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", Sync = MirrorSyncMode.None });
        await _f.WaitReadyAsync("job0");
        var written = new byte[100_000];
        new Random(1).NextBytes(written);
        await src.WriteAsync(1_000_000, written);
        written.CopyTo(expected, 1_000_000);
        // A write covers whole granules on the target only where the source holds them.
        await _f.Layer.CancelJobAsync("job0", force: false);
        await _f.WaitEndAsync("job0");

        var target = await MirrorFixture.ReadAllAsync(dst.Image);
        var source = await MirrorFixture.ReadAllAsync(src.Image);
        // The dirtied granules carry the source's bytes, everything else was never copied.
        var first = 1_000_000 / 65536 * 65536;
        var last = (1_100_000 + 65535) / 65536 * 65536;
        MirrorFixture.AssertSame(source[first..last], target[first..last]);
        Assert.True(target.AsSpan(0, first).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(target.AsSpan(last).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public async Task Auto_finalize_and_auto_dismiss_off_wait_for_the_verbs()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 8);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", AutoFinalize = false, AutoDismiss = false });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        var pending = await _f.Events.WaitForAsync("BLOCK_JOB_PENDING", "job0");
        Assert.Equal("mirror", pending.Str("type"));
        Assert.Equal(JobStatus.Pending, job.Status);

        // Writes wait while the job holds the final convergence; they land on the new image.
        var write = src.WriteAsync(0, new byte[] { 42 }).AsTask();
        Assert.False(write.IsCompleted);

        var refused = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.DismissJobAsync("job0"));
        Assert.Equal("job-verb-not-allowed", refused.Code);
        Assert.Equal("Job 'job0' in state 'pending' cannot accept command verb 'dismiss'", refused.Message);

        await _f.Layer.FinalizeJobAsync("job0");
        Assert.Equal(JobStatus.Concluded, job.Status);
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        await write.WaitAsync(RecordingEventSink.Timeout);
        model[0] = 42;
        MirrorFixture.AssertSame(model, await MirrorFixture.ReadAllAsync(src.Image));
        Assert.Same(job, _f.Layer.GetJob("job0"));

        await _f.Layer.DismissJobAsync("job0");
        Assert.Null(_f.Layer.FindJob("job0"));
        Assert.Same(job, _f.Layer.FindJob("job0", includeDismissed: true));
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded", "null"], await _f.StatusesAfterDismissAsync("job0"));
    }

    [Fact]
    public async Task Cancel_in_pending_aborts_without_pivot()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 9);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst", AutoFinalize = false });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        await _f.Events.WaitForAsync("BLOCK_JOB_PENDING", "job0");
        await _f.Layer.CancelJobAsync("job0", force: true);
        Assert.Equal("BLOCK_JOB_CANCELLED", (await _f.WaitEndAsync("job0")).Name);
        Assert.Equal("src.img", src.Path);
        Assert.NotNull(_f.Layer.FindNode("dst"));
        await src.WriteAsync(0, new byte[] { 1 }).AsTask().WaitAsync(RecordingEventSink.Timeout);
    }

    [Fact]
    public async Task Pause_and_resume_nest_with_qemu_errors()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 10);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");

        var notPaused = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.ResumeJobAsync("job0"));
        Assert.Equal("job-not-paused", notPaused.Code);
        Assert.Equal("Can't resume a job that was not paused", notPaused.Message);

        await _f.Layer.PauseJobAsync("job0");
        await _f.Events.WaitForStatusAsync("job0", "standby");
        Assert.True(job.GetInfo().Paused);
        Assert.True(job.GetInfo().Ready);
        var again = await Assert.ThrowsAsync<BlockException>(() => _f.Layer.PauseJobAsync("job0"));
        Assert.Equal("job-already-paused", again.Code);
        Assert.Equal("Job is already paused", again.Message);

        // A write while paused is recorded, and copied after the resume.
        await src.WriteAsync(0, new byte[] { 7, 7, 7 });
        Assert.True(job.GetInfo().Remaining > 0);
        var mark = _f.Events.Count;
        await _f.Layer.ResumeJobAsync("job0");
        await _f.Events.WaitAfterAsync(mark, e => e.Name == "JOB_STATUS_CHANGE" && e.Str("status") == "ready");
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
        var head = new byte[3];
        await src.ReadAsync(0, head);
        Assert.Equal(new byte[] { 7, 7, 7 }, head);
    }

    [Fact]
    public async Task Zero_length_image_is_ready_at_once()
    {
        await _f.CreateRawAsync("src", 0);
        await _f.CreateRawAsync("dst", 0);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        Assert.Equal("BLOCK_JOB_COMPLETED", (await _f.WaitEndAsync("job0")).Name);
    }

    [Fact]
    public async Task Target_refuses_other_writers_while_the_job_owns_it()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        var e = await Assert.ThrowsAsync<BlockException>(() => dst.WriteAsync(0, new byte[] { 1 }).AsTask());
        Assert.Equal("node-busy", e.Code);
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CancelJobAsync("job0", force: true);
        await _f.WaitEndAsync("job0");
        await dst.WriteAsync(0, new byte[] { 1 });
        Assert.False(src.Busy);
    }

    [Fact]
    public async Task Job_store_gets_every_status_in_order()
    {
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await MirrorFixture.FillWithHolesAsync(src, seed: 11);
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job0");
        await _f.Layer.CompleteJobAsync("job0");
        await _f.Events.WaitForStatusAsync("job0", "null");
        await _f.Layer.FlushJobSavesAsync();

        var saves = _f.JobStore.Saves.Where(r => r.Uid == job.Uid).ToList();
        var statuses = saves.Select(r => r.Status).Distinct().ToList();
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded"], statuses);
        var last = _f.JobStore.Latest(job.Uid)!;
        Assert.True(last.Dismissed);
        Assert.Equal("mirror", last.Type);
        Assert.Equal("src", last.Device);
        Assert.Equal("dst", last.Target);
        Assert.NotNull(last.FinishedAt);
        Assert.Null(last.Error);
        Assert.Equal(last.Snapshot.CurrentProgress, last.Snapshot.TotalProgress);
        Assert.True(last.Snapshot.BytesCopied > 0);
    }
}
