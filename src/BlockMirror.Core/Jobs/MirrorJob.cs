using System.Runtime.CompilerServices;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// QEMU's mirror job (<c>block/mirror.c</c>): copies the device to the target while the device
/// stays in use, tracking what still differs in a working bitmap; goes <c>ready</c> once both
/// match, then on complete converges once more with writes quiesced and pivots the device onto
/// the target's image. This file: set-up, verbs, snapshot and the exit (pivot, bitmaps). The copy
/// loop is in MirrorJob.Loop.cs, the write hook in MirrorJob.Filter.cs.
/// </summary>
public sealed partial class MirrorJob : Job
{
    /// <summary>QEMU's MAX_IN_FLIGHT: background operations at once.</summary>
    internal const int MaxInFlight = 16;

    /// <summary>QEMU's MAX_IO_BYTES: the smallest cap of one copy operation.</summary>
    private const long MaxIoBytes = 1L << 20;

    /// <summary>A copy buffer is never larger than this (QEMU caps by granularity × IOV_MAX).</summary>
    private const long MaxChunkBytes = 32L << 20;

    private readonly BlockNode _device;
    private readonly BlockNode _target;
    // Replaced by an empty bitmap once the job is over (ReleaseWorkingCopy): concluded and dismissed jobs are kept.
    private DirtyBitmap _working;
    private readonly DirtyBitmap? _named;
    private readonly MirrorWriteFilter _filter;
    private readonly TargetGuardFilter _guard;
    private readonly ByteRateLimiter _limiter;
    private readonly RateMeter _copyRate;
    private readonly RateMeter _dirtyRate;
    private readonly ChunkBufferPool _buffers;
    private readonly TargetWriteback _writeback;
    private readonly Lock _opsLock = new();
    private readonly List<MirrorOp> _ops = [];
    // Cancelled by a force cancel: every I/O of the job is abandoned, whatever its nodes do.
    private readonly CancellationTokenSource _abandon = new();

    private int _copyMode;
    private volatile bool _ready;
    private volatile bool _completeRequested;
    private volatile bool _loopExited;
    private bool _succeeded;
    private bool _pivoted;
    private IBlockImage? _oldImage;
    private IDisposable? _exitQuiesce;
    // Progress at exit, published whole: the bitmap may record again afterwards (mode always).
    private StrongBox<(long Dirty, long InFlight)>? _frozen;

    internal MirrorJob(IJobHost host, string id, MirrorOptions options, BlockNode device, BlockNode target,
        int granularity, long bufSize, DirtyBitmap? named, BitmapMode? bitmapMode)
        : base(host, id, device.Name, options.AutoFinalize, options.AutoDismiss, options.Speed)
    {
        Options = options;
        _device = device;
        _target = target;
        Granularity = granularity;
        BufSize = bufSize;
        _named = named;
        BitmapMode = bitmapMode;
        _copyMode = (int)InitialEffectiveMode(options.CopyMode);
        _requestedCopyMode = options.CopyMode;
        _filter = new MirrorWriteFilter(this);
        _guard = new TargetGuardFilter(id);
        _limiter = new ByteRateLimiter(host.Time, options.Speed);
        _copyRate = new RateMeter(host.Time);
        _dirtyRate = new RateMeter(host.Time);
        ChunkMax = ComputeChunkMax(bufSize, granularity);
        _buffers = new ChunkBufferPool((int)ChunkMax);
        _writeback = new TargetWriteback(target.Image, target.Size);
        _working = CreateWorkingBitmap();
    }

    public override string Type => "mirror";

    public override string? Target => _target.Name;

    /// <summary>The options the job was started with (after binding; see the properties for the effective values).</summary>
    public MirrorOptions Options { get; }

    public int Granularity { get; }

    /// <summary>Bytes in flight at most (rounded up to the granularity).</summary>
    public long BufSize { get; }

    /// <summary>The largest single copy operation: max(bufSize/16, 1 MiB), within bufSize.</summary>
    public long ChunkMax { get; }

    public BitmapMode? BitmapMode { get; }

    /// <summary>What writes do now: background or write-blocking (never auto; see <see cref="RequestedCopyMode"/>).</summary>
    public MirrorCopyMode CopyMode => (MirrorCopyMode)Volatile.Read(ref _copyMode);

    public bool ActivelySynced => Volatile.Read(ref _activelySynced) != 0;

    /// <summary>The bitmap the job works from (the caller's in mode always, else a private one).</summary>
    internal DirtyBitmap WorkingBitmap => _working;

    /// <summary>The job works from its working bitmap only (the caller's in mode always).</summary>
    public override bool WorksFrom(DirtyBitmap bitmap) => ReferenceEquals(Volatile.Read(ref _working), bitmap);

    /// <summary>Bytes of the job's private working bitmap (none when it works from the caller's).</summary>
    public override long PrivateBitmapBytes
    {
        get
        {
            var working = Volatile.Read(ref _working);
            return ReferenceEquals(working, _named) ? 0 : working.MemoryBytes;
        }
    }

    private long Size => _device.Size;

    private static long ComputeChunkMax(long bufSize, int granularity)
    {
        var max = Math.Min(Math.Max(bufSize / 16, MaxIoBytes), bufSize);
        max = Math.Min(max, Math.Max(MaxChunkBytes, granularity));
        return Math.Max(RoundDown(max, granularity), granularity);
    }

    private DirtyBitmap CreateWorkingBitmap()
    {
        if (_named is not null && BitmapMode == Jobs.BitmapMode.Always)
            return _named;
        // Private bitmaps are created disabled: the filter records writes, not the node.
        var working = new DirtyBitmap($"(mirror {Id})", Size, Granularity, disabled: true);
        if (_named is not null)
            working.MergeFrom(_named);
        return working;
    }

    // ---- set-up (MirrorStartAction, under the control lock with writes quiesced) -------------

    /// <summary>Inserts the job at one instant: nodes busy, filters in, the caller bitmap taken over.</summary>
    internal void AttachControlLocked()
    {
        _device.JobId = Id;
        _target.JobId = Id;
        if (_named is not null && BitmapMode == Jobs.BitmapMode.Always)
        {
            // The filter marks it from now on; the node must not mark it twice.
            _named.Busy = true;
            _named.Disabled = true;
        }
        _device.Filter = _filter;
        _target.Filter = _guard;
        // Written by the job alone now: its copies need not reach the file one by one (see IMetadataCachingImage).
        if (_target.Image is IMetadataCachingImage cached)
            cached.DeferMetadataWrites();
        Host.RegisterControlLocked(this);
    }

    /// <summary>Undoes <see cref="AttachControlLocked"/> (the transaction aborted).</summary>
    internal void DetachControlLocked()
    {
        Host.UnregisterControlLocked(this);
        if (ReferenceEquals(_device.Filter, _filter))
            _device.Filter = null;
        if (ReferenceEquals(_target.Filter, _guard))
        {
            _target.Filter = null;
            // Nothing was copied yet, so nothing waits in the target's cache: this only turns it back on.
            if (_target.Image is IMetadataCachingImage cached)
                _ = cached.WriteMetadataThroughAsync();
        }
        if (_named is not null && BitmapMode == Jobs.BitmapMode.Always)
        {
            _named.Disabled = false;
            _named.Busy = false;
        }
        _device.JobId = null;
        _target.JobId = null;
    }

    // ---- verbs --------------------------------------------------------------------------------

    /// <summary>
    /// mirror_cancel: only a job in ready (or standby) can be soft-cancelled into a point-in-time
    /// copy; any other cancel is a force cancel (job_is_ready looks at the status, so a job that
    /// was ready and now waits in pending after complete is force-cancelled: no pivot).
    /// </summary>
    protected override bool OnCancelStateLocked(bool force) => force || Status is not (JobStatus.Ready or JobStatus.Standby);

    /// <summary>
    /// bdrv_cancel_in_flight, made unconditional: requests in flight on either image are abandoned
    /// (an NBD image drops its connection), so the loop and the drain end at once; every range
    /// not known copied stays dirty in the working bitmap.
    /// </summary>
    protected override void OnForceCancelled()
    {
        _abandon.Cancel();
        Wake.Set();
    }

    /// <summary>Cancelled once a force cancel abandons the job's I/O.</summary>
    private CancellationToken Abandoned => _abandon.Token;

    /// <summary>A force cancel abandoned the job's I/O: any failure from now on is its consequence, not an error of an image.</summary>
    private bool Abandoning => _abandon.IsCancellationRequested;

    protected override void OnCompleteStateLocked()
    {
        if (!_ready)
            throw BlockErrors.Conflict("job-verb-not-allowed", $"The active block job '{Id}' cannot be completed");
        _completeRequested = true;
    }

    /// <summary>mirror_change: background → write-blocking, and auto's changes (MirrorJob.CopyMode.cs).</summary>
    protected override void OnChangeStateLocked(MirrorCopyMode copyMode) => ChangeCopyModeStateLocked(copyMode);

    protected override void OnSpeedChanged(long speed) => _limiter.SetSpeed(speed);

    // ---- snapshot -----------------------------------------------------------------------------

    public override JobInfo GetInfo()
    {
        var (dirty, inFlight) = Volatile.Read(ref _frozen)?.Value ?? (_working.Count, Interlocked.Read(ref _inFlightBytes));
        var current = Interlocked.Read(ref _currentProgress);
        var remaining = dirty + inFlight;
        var status = Status;
        // A paused job copies nothing: its rate and ETA say so at once instead of showing the
        // last seconds' values until the meter's window drains. Writes still dirty the working
        // bitmap while it waits, so the dirty rate stays measured until the job is over.
        var finished = status is JobStatus.Aborting or JobStatus.Concluded or JobStatus.Null;
        var copying = !finished && !Paused;
        var copyRate = copying ? _copyRate.Rate() : 0;
        var dirtyRate = finished ? 0 : _dirtyRate.Rate();
        long? eta = !copying ? null : remaining == 0 ? 0 : copyRate > dirtyRate ? (remaining + copyRate - 1) / copyRate : null;
        return new JobInfo(
            Id, Type, VisibleStatus(), Device, Target,
            JobNames.Of(Options.Sync), _named?.Name, BitmapMode is { } m ? JobNames.Of(m) : null, JobNames.Of(RequestedCopyMode),
            Granularity, BufSize, Speed,
            current, current + remaining, remaining, Interlocked.Read(ref _bytesCopied), copyRate, dirtyRate, eta,
            status is JobStatus.Ready or JobStatus.Standby, Paused, ActivelySynced, JobNames.Of(IoStatus), Error,
            AutoFinalize, AutoDismiss, CreatedAt, UpdatedAt, FinishedAt,
            Outcome is { } outcome ? JobNames.Of(outcome) : null, CancelMode is { } cancel ? JobNames.Of(cancel) : null, ReadyAt,
            JobNames.Of(CopyMode), CopyModeSwitchedAt);
    }

    protected override (long Len, long Offset) EventProgress()
    {
        var (dirty, inFlight) = Volatile.Read(ref _frozen)?.Value ?? (_working.Count, Interlocked.Read(ref _inFlightBytes));
        var current = Interlocked.Read(ref _currentProgress);
        return (current + dirty + inFlight, current);
    }

    // ---- exit (control lock held) -------------------------------------------------------------

    /// <summary>
    /// mirror_exit_common's graph change on success: the device node takes the target's image
    /// (writes are still quiesced since the final convergence) and the target node is consumed.
    /// A soft cancel in ready leaves the graph as it is (point-in-time copy).
    /// </summary>
    protected override Task PrepareControlLockedAsync()
    {
        if (!_completeRequested)
            return Task.CompletedTask;
        if (_target.Exports.Count > 0)
        {
            // Another user appeared on the target since the start: replacing would change what it sees.
            throw new JobFailedException("Operation not permitted");
        }
        if (Host.IsImageReplacedControlLocked(_target))
        {
            // The device would switch to a file no longer under the target's path.
            throw new JobFailedException($"Cannot pivot: {_target.ImageReplacedReason}");
        }
        return PivotAsync();
    }

    /// <summary>
    /// The device takes the target's image and the target is consumed, stored first: the pivot is
    /// reported only once it is durable, or a restart would put the device back on its old image and
    /// lose every write made after it. A store that fails switches the device back (its writes are still
    /// quiesced, none went to the new image) and fails the job with the reason; the target stays.
    /// </summary>
    private async Task PivotAsync()
    {
        try
        {
            // The device's clients write this image from now on: their writes are written through again.
            await WriteTargetMetadataThroughAsync().ConfigureAwait(false);
            _oldImage = await Host.PivotControlLockedAsync(_device, _target).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            throw new JobFailedException($"The pivot onto '{_target.Name}' could not be stored, the device stays on its image: {e.Message}", e);
        }
        _pivoted = true;
    }

    protected override async Task CommitControlLockedAsync()
    {
        _succeeded = true;
        if (!_pivoted)
            return;
        // The old source image is no longer attached; the file stays where it was.
        if (_oldImage is not null)
            await BestEffortAsync("closing the device's old image", () => _oldImage.DisposeAsync().AsTask()).ConfigureAwait(false);
    }

    /// <summary>
    /// Both outcomes: remove the filters, free the nodes, settle the caller's bitmap per
    /// bitmapMode, all with the device's writes quiesced so no write falls between the filter
    /// and the node's own bitmaps.
    /// </summary>
    protected override async Task CleanControlLockedAsync()
    {
        var quiesce = _exitQuiesce ?? await Host.QuiesceAsync(_device).ConfigureAwait(false);
        _exitQuiesce = null;
        try
        {
            Volatile.Write(ref _frozen, new StrongBox<(long, long)>((_working.Count, Interlocked.Read(ref _inFlightBytes))));
            if (ReferenceEquals(_device.Filter, _filter))
                _device.Filter = null;
            _device.JobId = null;
            if (!_pivoted)
            {
                if (ReferenceEquals(_target.Filter, _guard))
                    _target.Filter = null;
                _target.JobId = null;
            }
            ReleaseCallerBitmap();
        }
        finally
        {
            quiesce.Dispose();
        }
        // Before the caller's bitmap is stored with the job's clears: the copies they stand for must be
        // in the target's file (a force cancel or an error ends the job without a flush of the target),
        // and the target may have other writers from now on.
        if (!_pivoted)
            await BestEffortAsync($"writing back the metadata of target '{_target.Name}'", () => WriteTargetMetadataThroughAsync().AsTask()).ConfigureAwait(false);
        if (_named is not null && _device.FindBitmap(_named.Name) == _named)
            await BestEffortAsync($"storing bitmap '{_device.Name}/{_named.Name}'", () => Host.CheckpointControlLockedAsync(_device, _named)).ConfigureAwait(false);
        ReleaseWorkingCopy();
    }

    /// <summary>
    /// A private working bitmap is not needed once the job is over (snapshots show the progress frozen
    /// at exit, the filter is out, the loop has ended): its memory goes back, as the kept job record
    /// would otherwise hold it until the process ends.
    /// </summary>
    private void ReleaseWorkingCopy()
    {
        if (!ReferenceEquals(_working, _named))
            Volatile.Write(ref _working, new DirtyBitmap(_working.Name, 0, Granularity, disabled: true));
    }

    /// <summary>The bitmapMode contract at exit (API.md).</summary>
    private void ReleaseCallerBitmap()
    {
        if (_named is null)
            return;
        switch (BitmapMode)
        {
            case Jobs.BitmapMode.Always:
                // It holds what was not copied (nothing after success); it records again.
                _named.Disabled = false;
                _named.Busy = false;
                break;
            case Jobs.BitmapMode.OnSuccess when _succeeded && _device.FindBitmap(_named.Name) == _named:
                // What the job left dirty replaces what was copied.
                _named.RestoreBits(_working.SnapshotBits());
                break;
        }
    }

    /// <summary>The target's metadata written back and written through again (it was deferred while the job alone wrote it).</summary>
    private ValueTask WriteTargetMetadataThroughAsync() =>
        _target.Image is IMetadataCachingImage cached ? cached.WriteMetadataThroughAsync() : ValueTask.CompletedTask;

    private async Task BestEffortAsync(string what, Func<Task> action)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // The in-memory state is already final; a failed write-through is repaired by the next save.
            LogBestEffortFailed(Host.Logger, e, Id, what);
        }
    }

    [LoggerMessage(1, LogLevel.Warning, "Job '{Job}': {What} failed at its exit; the next save repairs the record")]
    private static partial void LogBestEffortFailed(ILogger logger, Exception exception, string job, string what);

    private static long RoundDown(long value, long granularity) => value / granularity * granularity;

    private static long RoundUp(long value, long granularity) => (value + granularity - 1) / granularity * granularity;
}
