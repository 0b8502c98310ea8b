using System.Runtime.CompilerServices;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Jobs;

/// <summary>The copy loop (mirror_run, mirror_iteration): one task per job.</summary>
public sealed partial class MirrorJob
{
    private static readonly TimeSpan ProgressSaveInterval = TimeSpan.FromSeconds(2);

    private int _inFlightChunks;
    private long _inFlightBufferBytes;
    private long _inFlightBytes;
    private long _currentProgress;
    private long _bytesCopied;
    private long _bytesCopiedInKernel;
    // Set once the target refused a copy offload from the device (another file system, not two
    // files): every later chunk is read and written without asking again.
    private volatile bool _copyOffloadRefused;
    private int _activelySynced;
    private Exception? _failure;
    private long _cursor;
    private long _lastProgressSave;
    private IDisposable? _convergeQuiesce;

    /// <summary>mirror_run: dirty initialisation, then the loop until converged-and-completing or cancelled.</summary>
    protected override async Task RunAsync()
    {
        _lastProgressSave = Host.Time.GetTimestamp();
        try
        {
            await DirtyInitAsync().ConfigureAwait(false);
            while (true)
            {
                ThrowIfFailed();
                if (Paused)
                    ReleaseConvergeQuiesce();
                await PausePointAsync().ConfigureAwait(false);
                if (ForceCancelled)
                    return;
                SaveProgressIfDue();
                WatchConvergence();

                var dirty = _working.Count;
                var inFlight = Volatile.Read(ref _inFlightChunks);
                if (dirty > 0 && inFlight < MaxInFlight && IoStatus == IoStatus.Ok)
                {
                    var delay = _limiter.Delay();
                    if (delay > TimeSpan.Zero)
                        await Wake.WaitAsync(delay).ConfigureAwait(false);
                    else if (!await IterateAsync().ConfigureAwait(false))
                        await Wake.WaitAsync().ConfigureAwait(false);
                    continue;
                }
                if (dirty > 0 || inFlight > 0)
                {
                    await Wake.WaitAsync().ConfigureAwait(false);
                    continue;
                }

                // Nothing dirty and nothing in flight: source and target match right now.
                if (!_ready)
                {
                    if (!await FlushTargetAsync().ConfigureAwait(false))
                        continue;
                    // Synced before ready is announced, so a client that sees READY sees it too.
                    MarkActivelySyncedIfClean();
                    BecomeReady();
                }
                MarkActivelySyncedIfClean();
                if (_completeRequested || CancelRequested)
                {
                    if (await TryConvergeAsync().ConfigureAwait(false))
                        return;
                    continue;
                }
                await Wake.WaitAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            _loopExited = true;
            await DrainAsync().ConfigureAwait(false);
            ReleaseConvergeQuiesce();
        }
    }

    private void ThrowIfFailed()
    {
        if (Volatile.Read(ref _failure) is { } failure)
            throw new JobFailedException(IoErrorText.Of(failure), failure);
    }

    private void BecomeReady()
    {
        lock (StateLock)
        {
            _ready = true;
            Transition(JobStatus.Ready);
        }
        PublishReady();
    }

    /// <summary>QEMU sets actively_synced in write-blocking mode at every clean pass; a racing dirtying write clears it again.</summary>
    private void MarkActivelySyncedIfClean()
    {
        if (CopyMode != MirrorCopyMode.WriteBlocking)
            return;
        Interlocked.Exchange(ref _activelySynced, 1);
        // A background-path write marks first and clears the flag after, so re-checking here
        // closes the window between our check above and the set.
        if (_working.Count > 0 || Volatile.Read(ref _inFlightChunks) > 0 || CopyMode != MirrorCopyMode.WriteBlocking)
            Interlocked.Exchange(ref _activelySynced, 0);
    }

    private void SaveProgressIfDue()
    {
        if (!Host.StoresJobs || Host.Time.GetElapsedTime(_lastProgressSave) < ProgressSaveInterval)
            return;
        _lastProgressSave = Host.Time.GetTimestamp();
        Touch();
        Save();
    }

    /// <summary>
    /// Complete (or soft cancel) with nothing dirty: quiesce the device's writes and check again.
    /// Writes that were in flight may have dirtied a little more; the loop copies it with writes
    /// still held, so convergence is guaranteed even under a heavy writer (QEMU instead undrains
    /// and retries, which can go on forever). Clean and flushed, the job leaves the loop holding
    /// the quiesce until the pivot (or the soft cancel's end).
    /// </summary>
    private async Task<bool> TryConvergeAsync()
    {
        _convergeQuiesce ??= await Host.QuiesceAsync(_device, Abandoned).ConfigureAwait(false);
        if (_working.Count != 0 || Volatile.Read(ref _inFlightChunks) != 0)
            return false;
        if (!await FlushTargetAsync().ConfigureAwait(false) || _working.Count != 0)
            return false;
        _exitQuiesce = _convergeQuiesce;
        _convergeQuiesce = null;
        return true;
    }

    /// <summary>Lets writes run again (a pause, an error or a cancel interrupts the convergence).</summary>
    private void ReleaseConvergeQuiesce()
    {
        _convergeQuiesce?.Dispose();
        _convergeQuiesce = null;
    }

    private async Task<bool> FlushTargetAsync()
    {
        try
        {
            await _target.Image.FlushAsync(Abandoned).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            if (!Abandoning)
                OnIoError(e, read: false);
            return false;
        }
    }

    /// <summary>Waits until no background operation is in flight (before pausing and at exit).</summary>
    private async Task DrainAsync()
    {
        while (Volatile.Read(ref _inFlightChunks) > 0)
            await Wake.WaitAsync().ConfigureAwait(false);
        // The drain consumed wake-ups meant for the loop; make sure it looks again.
        Wake.Set();
    }

    protected override ValueTask OnPausingAsync()
    {
        RestartConvergenceWatch();
        return new(DrainAsync());
    }

    // ---- dirty initialisation -------------------------------------------------------------------

    /// <summary>
    /// mirror_dirty_init for a private working list: every data extent of the source is dirty; a
    /// source hole needs work only where the target holds data (it must read as zeroes). A caller's
    /// bitmap is the work list itself, and sync=none copies new writes only.
    /// </summary>
    private async Task DirtyInitAsync()
    {
        if (Options.Sync == MirrorSyncMode.None || _named is not null)
            return;
        if (Options.Sync == MirrorSyncMode.Top && _device.Image is ILayeredImage { Backing: not null } layered)
        {
            await MarkTopLayerDirtyAsync(layered).ConfigureAwait(false);
            return;
        }
        if (Options.Sync == MirrorSyncMode.Full)
            await MarkTargetRewrittenAsync().ConfigureAwait(false);
        var targetHasData = await TargetHasDataAsync().ConfigureAwait(false);
        await foreach (var extent in ImageExtents.EnumerateAsync(_device.Image, 0, Size, Abandoned).ConfigureAwait(false))
        {
            if (ForceCancelled)
                return;
            if (extent.Kind == ExtentKind.Data)
                _working.MarkDirty(extent.Offset, extent.Length);
            else if (targetHasData)
                await MarkTargetDataAsync(extent.Offset, extent.Length).ConfigureAwait(false);
            await PausePointAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// mirror_dirty_init for sync=top: what the device's own layer holds (data, or zeroes over its
    /// backing) is dirty, the rest is the backing's, which the target's own backing supplies
    /// (bdrv_is_allocated_above with base = the device's backing image). The target is not zeroed:
    /// the user made it on the same or an equal backing, as for QEMU's blockdev-mirror.
    /// </summary>
    private async Task MarkTopLayerDirtyAsync(ILayeredImage device)
    {
        for (var pos = 0L; pos < Size;)
        {
            if (ForceCancelled)
                return;
            var extent = await device.GetLayerStatusAsync(pos, Size - pos, Abandoned).ConfigureAwait(false);
            if (extent.Length <= 0)
                throw new InvalidOperationException($"Layer status of '{device.Location}' at {pos} returned [{extent.Offset}, +{extent.Length})");
            if (extent.Kind != Qcow2LayerKind.Unallocated)
                _working.MarkDirty(extent.Offset, extent.Length);
            pos += extent.Length;
            await PausePointAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// sync=full rewrites the whole target: QEMU (up to 10.0) zeroes it first through the job's
    /// BlockBackend, so a bitmap on the target is fully dirty at once. This job skips that pass
    /// (it zeroes only where the target holds data the source lacks), so it marks the target's
    /// bitmaps as that pass would have, through the target's write path (gate, write-ahead journal).
    /// </summary>
    /// <remarks>A journal that cannot take it fails the job: its copies could not be recorded either.</remarks>
    private Task MarkTargetRewrittenAsync() => _target.MarkAsOwnerAsync(0, Size).AsTask();

    /// <summary>
    /// False when one block-status query says the whole target is a hole (a freshly created target):
    /// then no hole of the source needs work, and the walk asks the target nothing per hole (899
    /// queries for the 8 GiB bench image). The job is the target's only writer, so it stays so.
    /// </summary>
    private async Task<bool> TargetHasDataAsync()
    {
        if (Size == 0)
            return false;
        try
        {
            var first = await _target.Image.GetBlockStatusAsync(0, Size, Abandoned).ConfigureAwait(false);
            return first.Kind != ExtentKind.Zero || first.Length < Size;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return true; // cannot tell: probe per hole, as the walk below would
        }
    }

    private async Task MarkTargetDataAsync(long offset, long length)
    {
        await foreach (var extent in ImageExtents.EnumerateAsync(_target.Image, offset, length, Abandoned).ConfigureAwait(false))
        {
            if (extent.Kind == ExtentKind.Data)
                _working.MarkDirty(extent.Offset, extent.Length);
        }
    }

    // ---- one iteration ---------------------------------------------------------------------------

    /// <summary>
    /// mirror_iteration: claim the next dirty run (up to bufSize, stopping at anything in flight),
    /// clear its bits before any I/O so racing writes re-dirty it, and dispatch it in chunks.
    /// Returns false when nothing could be claimed (the caller waits for a wake-up).
    /// </summary>
    private async Task<bool> IterateAsync()
    {
        var claim = TryClaim();
        if (claim is null)
            return false;
        var pos = claim.Offset;
        var end = claim.End;
        try
        {
            while (pos < end)
            {
                if (!await WaitForSlotAsync().ConfigureAwait(false))
                    break;
                var (length, kind) = await NextChunkAsync(pos, end).ConfigureAwait(false);
                if (kind == ExtentKind.Data && Interlocked.Read(ref _inFlightBufferBytes) + length > BufSize)
                {
                    await Wake.WaitAsync().ConfigureAwait(false);
                    continue;
                }
                Dispatch(claim, pos, length, kind);
                pos += length;
            }
        }
        finally
        {
            if (pos < end)
            {
                // Claimed but not dispatched (error, pause, cancel): it is still to do.
                _working.MarkDirty(pos, end - pos);
                Interlocked.Add(ref _inFlightBytes, -(end - pos));
            }
            ReleaseClaim(claim);
        }
        _cursor = end >= Size ? 0 : end;
        return true;
    }

    /// <summary>Claims the next dirty run at or after the cursor (wrapping to 0), or null.</summary>
    private MirrorOp? TryClaim()
    {
        lock (_opsLock)
        {
            if (!_working.NextDirtyRun(_cursor, BufSize, out var offset, out var length)
                && !(_cursor > 0 && _working.NextDirtyRun(0, BufSize, out offset, out length)))
                return null;
            var end = offset + length;
            foreach (var op in _ops)
            {
                if (!op.Overlaps(offset, end))
                    continue;
                // Stop before the granule the op touches; if that is our first granule, wait for it.
                end = Math.Min(end, RoundDown(op.Offset, Granularity));
                if (end <= offset)
                {
                    _cursor = offset;
                    return null;
                }
            }
            _working.ClearDirty(offset, end - offset);
            var claim = new MirrorOp(offset, end - offset, active: false) { Pending = 1 };
            _ops.Add(claim);
            Interlocked.Add(ref _inFlightBytes, end - offset);
            return claim;
        }
    }

    /// <summary>Waits for one of the 16 slots; false when the job must stop dispatching.</summary>
    private async ValueTask<bool> WaitForSlotAsync()
    {
        while (true)
        {
            if (Volatile.Read(ref _failure) is not null || ForceCancelled || Paused)
                return false;
            if (Volatile.Read(ref _inFlightChunks) < MaxInFlight)
                return true;
            await Wake.WaitAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The source's block status decides the operation: data is copied (at most one buffer), a
    /// hole of whole granules is written as zeroes. A piece shorter than a granule is copied as
    /// data; a failing status query is treated as data.
    /// </summary>
    private async ValueTask<(long Length, ExtentKind Kind)> NextChunkAsync(long pos, long end)
    {
        ImageExtent extent;
        try
        {
            extent = await _device.Image.GetBlockStatusAsync(pos, end - pos, Abandoned).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            extent = new ImageExtent(pos, end - pos, ExtentKind.Data);
        }
        var kind = extent.Kind;
        var length = Math.Clamp(extent.Length, 1, end - pos);
        if (kind == ExtentKind.Data)
            length = Math.Min(length, ChunkMax);
        if (pos + length < end)
        {
            length = RoundDown(length, Granularity);
            if (length == 0)
            {
                length = Math.Min(Granularity, end - pos);
                kind = ExtentKind.Data;
            }
        }
        return (length, kind);
    }

    private void Dispatch(MirrorOp claim, long offset, long length, ExtentKind kind)
    {
        Interlocked.Increment(ref claim.Pending);
        Interlocked.Increment(ref _inFlightChunks);
        byte[]? buffer = null;
        if (kind == ExtentKind.Data)
        {
            buffer = _buffers.Rent();
            Interlocked.Add(ref _inFlightBufferBytes, length);
            // Only data read from the source costs bandwidth; zero writes are metadata (QEMU).
            _limiter.Account(length);
        }
        _ = RunChunkAsync(claim, offset, length, buffer);
    }

    /// <summary>One background operation: copy (or zero) a chunk, then account or re-dirty it.</summary>
    private async Task RunChunkAsync(MirrorOp claim, long offset, long length, byte[]? buffer)
    {
        var read = false;
        try
        {
            // Every write goes through the target node's write path, past its guard: the target's
            // bitmaps record what the job writes (QEMU's job writes through its BlockBackend).
            if (buffer is null)
            {
                await _target.WriteAsOwnerAsync(WriteRequest.ForZeroes(offset, length, Options.Unmap), Abandoned).ConfigureAwait(false);
            }
            else if (_copyOffloadRefused || !await TryCopyInKernelAsync(offset, length).ConfigureAwait(false))
            {
                var data = buffer.AsMemory(0, (int)length);
                read = true;
                await _device.Image.ReadAsync(offset, data, Abandoned).ConfigureAwait(false);
                read = false;
                // Zeroes never allocate the target: write them as zeroes (a hole where allowed).
                var write = data.Span.IndexOfAnyExcept((byte)0) < 0
                    ? WriteRequest.ForZeroes(offset, length, Options.Unmap)
                    : WriteRequest.ForData(offset, data);
                await _target.WriteAsOwnerAsync(write, Abandoned).ConfigureAwait(false);
            }
            Interlocked.Add(ref _currentProgress, length);
            Interlocked.Add(ref _bytesCopied, length);
            _copyRate.Add(length);
            if (buffer is not null)
                _writeback.Written(offset, length);
        }
        catch (Exception e)
        {
            // The whole range is still to do, whatever the policy decides.
            _working.MarkDirty(offset, length);
            if (!Abandoning)
                OnIoError(e, read);
        }
        finally
        {
            Interlocked.Add(ref _inFlightBytes, -length);
            if (buffer is not null)
            {
                Interlocked.Add(ref _inFlightBufferBytes, -length);
                _buffers.Return(buffer);
            }
            Interlocked.Decrement(ref _inFlightChunks);
            ReleaseClaim(claim);
            Wake.Set();
        }
    }

    /// <summary>
    /// Copy offload: the target copies the chunk from the device itself (copy_file_range between two
    /// raw files), through its write path like any write of the job, so its gate, journal and
    /// bitmaps see it. Zero detection stays: the copy reads the chunk's first block before copying
    /// (in the same thread-pool work item, RefuseLeadingZeroes: a separate read before it cost one
    /// more hop between threads per chunk), and a chunk that starts with zeroes is refused and goes
    /// the read-and-write way, which reads it whole and writes it as zeroes if it is all zeroes; a
    /// chunk of data is told by its first bytes. False when the chunk must be read and written:
    /// that, a refusal (remembered for the job when it will not change) or an I/O error, which the
    /// read and write meet again where it lies, so the error policy of that side decides. A refused
    /// copy has marked the target's bitmaps over a range the fallback then writes: no change there.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> TryCopyInKernelAsync(long offset, long length)
    {
        if (_target.Image is not ICopyRangeTarget target || !target.CanCopyFrom(_device.Image))
        {
            // Not two files: no probe read for a copy that cannot happen.
            _copyOffloadRefused = true;
            return false;
        }
        try
        {
            await _target.WriteAsOwnerAsync(WriteRequest.ForCopy(offset, length, _device.Image, refuseLeadingZeroes: true), Abandoned).ConfigureAwait(false);
            Interlocked.Add(ref _bytesCopiedInKernel, length);
            return true;
        }
        catch (CopyRangeRefusedException e)
        {
            if (e.Permanent)
                _copyOffloadRefused = true;
            return false;
        }
        catch (Exception e) when (e is not OperationCanceledException && !Abandoning)
        {
            return false;
        }
    }

    /// <summary>Bytes the target copied from the device itself (copy offload), a part of the bytes copied.</summary>
    internal long BytesCopiedInKernel => Interlocked.Read(ref _bytesCopiedInKernel);

    /// <summary>The target refused a copy offload from the device for good; the job reads and writes.</summary>
    internal bool CopyOffloadRefused => _copyOffloadRefused;

    /// <summary>Writeback hints the target took behind the copy (<see cref="TargetWriteback"/>).</summary>
    internal TargetWriteback Writeback => _writeback;

    /// <summary>Drops one reference of a claim; the last one takes it out of flight and wakes its waiters.</summary>
    private void ReleaseClaim(MirrorOp claim)
    {
        if (Interlocked.Decrement(ref claim.Pending) != 0)
            return;
        TaskCompletionSource? waiters;
        lock (_opsLock)
        {
            _ops.Remove(claim);
            waiters = claim.TakeWaitersOpsLocked();
        }
        waiters?.TrySetResult();
    }

    // ---- errors ---------------------------------------------------------------------------------

    /// <summary>
    /// mirror_error_action / block_job_error_action: source errors follow on-source-error, target
    /// errors (writes, flushes) on-target-error. Every decision is an event; report fails the job,
    /// stop pauses it as a user pause with the io-status set, ignore retries later.
    /// </summary>
    private void OnIoError(Exception e, bool read)
    {
        Interlocked.Exchange(ref _activelySynced, 0);
        var policy = read ? Options.OnSourceError : Options.OnTargetError;
        var noSpace = IoErrorClassifier.IsNoSpace(e);
        var action = policy switch
        {
            BlockdevOnError.Ignore => BlockdevOnError.Ignore,
            BlockdevOnError.Stop => BlockdevOnError.Stop,
            BlockdevOnError.Enospc => noSpace ? BlockdevOnError.Stop : BlockdevOnError.Report,
            _ => BlockdevOnError.Report,
        };
        Host.Events.Publish("BLOCK_JOB_ERROR", new { id = Id, operation = read ? "read" : "write", action = JobNames.Of(action) });
        switch (action)
        {
            case BlockdevOnError.Report:
                Interlocked.CompareExchange(ref _failure, e, null);
                break;
            case BlockdevOnError.Stop:
                StopOnError(noSpace ? IoStatus.Nospace : IoStatus.Failed);
                Save();
                break;
        }
        Wake.Set();
    }
}
