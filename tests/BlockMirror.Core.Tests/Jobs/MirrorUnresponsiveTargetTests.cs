using System.Diagnostics;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;
using BlockMirror.Nbd;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A mirror onto an NBD target that stops answering (issue 10, case 15): a force cancel ends the
/// job in bounded time, keeps every range not known copied, frees the device, and leaves the
/// target node usable. The remote server is ours, made to stop answering: its reader blocks on the
/// first write-like request, so that request and every later one stay unanswered, as with a hung
/// server (nbdkit's delay filter in the interop test).
/// </summary>
public sealed class MirrorUnresponsiveTargetTests : IAsyncLifetime
{
    private const long Size = NbdTestServer.DiskSize;

    /// <summary>What "bounded" means here: far more than the few milliseconds a cancel takes, far less than forever.</summary>
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private readonly MirrorFixture _f = new();
    private readonly ManualResetEventSlim _answering = new(initialState: true);
    private readonly TaskCompletionSource _stalled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private NbdTestServer _remote = null!;

    public async Task InitializeAsync()
    {
        _remote = await NbdTestServer.StartAsync(configure: o => o.RequestReceived = StallWrites);
        var src = await _f.CreateRawAsync("src", Size);
        await _f.CreateRawAsync("dst", Size);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "b0", 65536, persistent: false, disabled: false));
        var data = new byte[Size];
        new Random(15).NextBytes(data);
        await src.WriteAsync(0, data);
    }

    public async Task DisposeAsync()
    {
        _answering.Set();
        await _f.DisposeAsync();
        await _remote.DisposeAsync();
        _answering.Dispose();
    }

    /// <summary>Runs on the server's reader: while not answering, the first write-like request blocks it for good.</summary>
    private void StallWrites(string export, string command)
    {
        if (command is "write" or "write-zeroes" or "trim" or "flush" && !_answering.IsSet)
        {
            _stalled.TrySetResult();
            _answering.Wait();
        }
    }

    private async Task<BlockNode> CreateRemoteAsync()
    {
        var uri = _remote.UriOf();
        _f.Opener.Register(uri, await NbdImage.OpenAsync(uri, readOnly: false));
        return await _f.Layer.CreateNodeAsync(new NodeSpec("remote", "nbd", null, uri, null, false));
    }

    [Fact]
    public async Task Force_cancel_ends_a_mirror_whose_NBD_target_stopped_answering()
    {
        var src = _f.Layer.GetNode("src");
        var remote = await CreateRemoteAsync();
        var b0 = src.GetBitmap("b0");
        Assert.Equal(Size, b0.Count);
        _answering.Reset();
        // b0 is the working bitmap (mode always): what it holds after the job is what was not copied.
        var job = await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "remote", Bitmap = "b0" });
        await _stalled.Task.WaitAsync(RecordingEventSink.Timeout);

        var clock = Stopwatch.StartNew();
        await _f.Layer.CancelJobAsync("job0", force: true).WaitAsync(Bound);
        var end = await _f.WaitEndAsync("job0").WaitAsync(Bound);
        Assert.True(clock.Elapsed < Bound, $"the cancel took {clock.Elapsed}");

        Assert.Equal("BLOCK_JOB_CANCELLED", end.Name);
        Assert.Equal(Job.CanceledError, job.Error);
        // Abandoned requests are not I/O errors of the target.
        Assert.Empty(_f.Events.Named("BLOCK_JOB_ERROR"));
        Assert.False(src.Busy);
        Assert.False(remote.Busy);
        // No write was acknowledged, so every granule is still to copy, and b0 records again.
        Assert.Equal(Size, b0.Count);
        Assert.False(b0.Busy);
        Assert.False(b0.Disabled);

        // The target node stays usable: its next request opens a new connection (reads are answered).
        var head = new byte[4096];
        await remote.Image.ReadAsync(0, head).AsTask().WaitAsync(Bound);
        Assert.False(((NbdImage)remote.Image).Client.Abandoned);
        // The device is free for the next job.
        await _f.StartAsync(new MirrorOptions { Id = "job1", Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("job1");
    }

    [Fact]
    public async Task Force_cancel_is_not_held_up_by_an_operation_waiting_for_a_write_the_target_never_answers()
    {
        var src = _f.Layer.GetNode("src");
        await CreateRemoteAsync();
        await _f.StartAsync(new MirrorOptions { Id = "job0", Device = "src", Target = "remote", CopyMode = MirrorCopyMode.WriteBlocking });
        await _f.WaitReadyAsync("job0");

        // Write-blocking: a guest write now waits for the target, which stops answering.
        _answering.Reset();
        var written = new byte[65536];
        Array.Fill(written, (byte)0x5a);
        var write = src.WriteAsync(0, written).AsTask();
        await _stalled.Task.WaitAsync(RecordingEventSink.Timeout);
        // A transaction takes the control lock and waits for that write to drain (QEMU's drained section).
        var transaction = _f.Layer.BitmapActionAsync(new BitmapAddAction("dst", "x", 65536, persistent: false, disabled: false));
        for (var i = 0; i < 1000 && !src.QuiesceGate.IsQuiesced; i++)
            await Task.Delay(10);
        Assert.True(src.QuiesceGate.IsQuiesced);
        Assert.False(transaction.IsCompleted);

        var clock = Stopwatch.StartNew();
        await _f.Layer.CancelJobAsync("job0", force: true).WaitAsync(Bound);
        var end = await _f.WaitEndAsync("job0").WaitAsync(Bound);
        // The guest's write succeeded on the source (QEMU: a target failure never fails it), and the transaction ran.
        await write.WaitAsync(Bound);
        await transaction.WaitAsync(Bound);
        Assert.True(clock.Elapsed < Bound, $"the cancel took {clock.Elapsed}");
        Assert.Equal("BLOCK_JOB_CANCELLED", end.Name);
        var back = new byte[written.Length];
        await src.ReadAsync(0, back);
        Assert.Equal(written, back);
        Assert.False(src.Busy);
    }
}
