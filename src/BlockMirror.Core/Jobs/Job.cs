using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.State;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// A long-running block job with QEMU's generic state machine (<c>job.c</c>): statuses change only
/// along <see cref="CanTransition"/> (JobSTT), verbs are accepted only where
/// <see cref="AllowsVerb"/> (JobVerbTable) says so, pauses nest, and the lifecycle after the run
/// (waiting → pending → finalize → concluded → dismissed, or aborting → concluded) follows
/// auto-finalize and auto-dismiss. A driver subclass supplies the run and the graph changes.
/// </summary>
/// <remarks>
/// Verbs are called by the <see cref="JobManager"/> under the control lock (methods ending in
/// <c>ControlLocked</c>); the run executes on its own task and takes the control lock only to
/// finish. The job's own state is guarded by <see cref="StateLock"/> (methods ending in
/// <c>StateLocked</c>) so a verb never sees a half-made transition; events are published under it,
/// so their order is the order of the transitions. The layer is reached only through
/// <see cref="IJobHost"/>.
/// </remarks>
public abstract class Job
{
    private const bool T = true;
    private const bool F = false;

    /// <summary>QEMU's JobSTT: [from, to], in <see cref="JobStatus"/> order U C R P Y S W D X E N.</summary>
    private static readonly bool[,] s_transitions =
    {
        /* U: */ { F, T, F, F, F, F, F, F, F, F, F },
        /* C: */ { F, F, T, F, F, F, F, F, T, F, T },
        /* R: */ { F, F, F, T, T, F, T, F, T, F, F },
        /* P: */ { F, F, T, F, F, F, F, F, F, F, F },
        /* Y: */ { F, F, F, F, F, T, T, F, T, F, F },
        /* S: */ { F, F, F, F, T, F, F, F, F, F, F },
        /* W: */ { F, F, F, F, F, F, F, T, T, F, F },
        /* D: */ { F, F, F, F, F, F, F, F, T, T, F },
        /* X: */ { F, F, F, F, F, F, F, F, T, T, F },
        /* E: */ { F, F, F, F, F, F, F, F, F, F, T },
        /* N: */ { F, F, F, F, F, F, F, F, F, F, F },
    };

    /// <summary>QEMU's JobVerbTable: [verb, status], statuses in order U C R P Y S W D X E N.</summary>
    private static readonly bool[,] s_verbs =
    {
        /* cancel:    */ { F, T, T, T, T, T, T, T, F, F, F },
        /* pause:     */ { F, T, T, T, T, T, F, F, F, F, F },
        /* resume:    */ { F, T, T, T, T, T, F, F, F, F, F },
        /* set-speed: */ { F, T, T, T, T, T, F, F, F, F, F },
        /* complete:  */ { F, F, F, F, T, T, F, F, F, F, F },
        /* finalize:  */ { F, F, F, F, F, F, F, T, F, F, F },
        /* dismiss:   */ { F, F, F, F, F, F, F, F, F, T, F },
        /* change:    */ { F, T, T, T, T, T, F, F, F, F, F },
    };

    /// <summary>strerror(ECANCELED): the error of a force-cancelled job.</summary>
    public const string CanceledError = "Operation canceled";

    private readonly TaskCompletionSource _concluded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private JobStatus _status = JobStatus.Undefined;
    private int _pauseCount;
    private bool _userPaused;
    private IoStatus _ioStatus = IoStatus.Ok;
    private long _speed;
    private bool _cancelRequested;
    private bool _forceCancel;
    private string? _error;
    private string? _stopReason;
    private bool _dismissed;
    private DateTime _updatedAt;
    private DateTime? _finishedAt;
    private DateTime? _readyAt;
    private bool _completeAccepted;
    private JobOutcome? _outcome;
    private JobCancelMode? _cancelMode;

    protected Job(IJobHost host, string id, string device, bool autoFinalize, bool autoDismiss, long speed, Guid? uid = null, DateTime? createdAt = null)
    {
        Host = host;
        Id = id;
        Device = device;
        AutoFinalize = autoFinalize;
        AutoDismiss = autoDismiss;
        _speed = speed;
        Uid = uid ?? Guid.NewGuid();
        CreatedAt = createdAt ?? Now;
        _updatedAt = CreatedAt;
        Wake = new AsyncSignal(host.Time);
    }

    /// <summary>The layer as a job sees it.</summary>
    public IJobHost Host { get; }

    private DateTime Now => Host.Time.GetUtcNow().UtcDateTime;

    /// <summary>Unique per job run (ids can be reused once a job is dismissed).</summary>
    public Guid Uid { get; }

    public string Id { get; }

    /// <summary>QEMU's job type ("mirror").</summary>
    public abstract string Type { get; }

    /// <summary>The node the job works on (QEMU's device).</summary>
    public string Device { get; }

    /// <summary>The node the job writes to, if any.</summary>
    public virtual string? Target => null;

    public bool AutoFinalize { get; }

    public bool AutoDismiss { get; }

    public DateTime CreatedAt { get; }

    public JobStatus Status
    {
        get
        {
            lock (StateLock)
                return _status;
        }
    }

    /// <summary>QEMU's <c>paused</c>: a pause is requested or in force (pause_count &gt; 0).</summary>
    public bool Paused => Volatile.Read(ref _pauseCount) > 0;

    public bool UserPaused
    {
        get
        {
            lock (StateLock)
                return _userPaused;
        }
    }

    public IoStatus IoStatus
    {
        get
        {
            lock (StateLock)
                return _ioStatus;
        }
    }

    public long Speed => Interlocked.Read(ref _speed);

    /// <summary>The failure, once the job concluded with one (QEMU's strerror-like sentence).</summary>
    public string? Error
    {
        get
        {
            lock (StateLock)
                return _error;
        }
    }

    public bool Dismissed
    {
        get
        {
            lock (StateLock)
                return _dismissed;
        }
    }

    public DateTime UpdatedAt
    {
        get
        {
            lock (StateLock)
                return _updatedAt;
        }
    }

    public DateTime? FinishedAt
    {
        get
        {
            lock (StateLock)
                return _finishedAt;
        }
    }

    /// <summary>When the job first became ready (null until then).</summary>
    public DateTime? ReadyAt
    {
        get
        {
            lock (StateLock)
                return _readyAt;
        }
    }

    /// <summary>How the job ended, once it concluded (null before).</summary>
    public JobOutcome? Outcome
    {
        get
        {
            lock (StateLock)
                return _outcome;
        }
    }

    /// <summary>Which cancel ended the job, when <see cref="Outcome"/> is cancelled.</summary>
    public JobCancelMode? CancelMode
    {
        get
        {
            lock (StateLock)
                return _cancelMode;
        }
    }

    /// <summary>Completes when the job reaches <c>concluded</c>.</summary>
    public Task Concluded => _concluded.Task;

    /// <summary>A force cancel was requested: the run stops as soon as its in-flight work is done.</summary>
    protected bool ForceCancelled
    {
        get
        {
            lock (StateLock)
                return _forceCancel;
        }
    }

    /// <summary>Any cancel (soft or force) was requested.</summary>
    protected bool CancelRequested
    {
        get
        {
            lock (StateLock)
                return _cancelRequested;
        }
    }

    protected Lock StateLock { get; } = new();

    /// <summary>Wakes the run whenever something it may wait for happened (verbs, I/O, writes).</summary>
    internal AsyncSignal Wake { get; }

    /// <summary>A snapshot with every field of API.md's "Job".</summary>
    public abstract JobInfo GetInfo();

    /// <summary>
    /// Whether the job works from <paramref name="bitmap"/> (clears its bits before their work is done,
    /// so a checkpoint may store only what is durable of it, and may not store it disabled).
    /// </summary>
    public virtual bool WorksFrom(DirtyBitmap bitmap) => false;

    /// <summary>Bytes of bitmaps the job owns privately, counted in the layer's bitmap memory budget.</summary>
    public virtual long PrivateBitmapBytes => 0;

    public static bool CanTransition(JobStatus from, JobStatus to) => s_transitions[(int)from, (int)to];

    public static bool AllowsVerb(JobStatus status, JobVerb verb) => s_verbs[(int)verb, (int)status];

    // ---- transitions ------------------------------------------------------------------------

    /// <summary>Moves to <paramref name="to"/>; an illegal transition is a bug, not a user error.</summary>
    protected void Transition(JobStatus to)
    {
        lock (StateLock)
            TransitionStateLocked(to);
    }

    private void TransitionStateLocked(JobStatus to)
    {
        var from = _status;
        if (!CanTransition(from, to))
            throw new InvalidOperationException($"Job '{Id}': illegal transition {JobNames.Of(from)} -> {JobNames.Of(to)}");
        _status = to;
        _updatedAt = Now;
        if (to == JobStatus.Ready)
            _readyAt ??= _updatedAt;
        if (from != to)
            Host.Events.Publish("JOB_STATUS_CHANGE", new { id = Id, status = JobNames.Of(to) });
        Save();
    }

    /// <summary>QEMU's job_apply_verb: refuses a verb the current status does not allow.</summary>
    private void ApplyVerbStateLocked(JobVerb verb)
    {
        if (!AllowsVerb(_status, verb))
            throw BlockErrors.Conflict("job-verb-not-allowed",
                $"Job '{Id}' in state '{JobNames.Of(_status)}' cannot accept command verb '{JobNames.Of(verb)}'");
    }

    /// <summary>Checks a verb without applying anything (drivers with their own verbs).</summary>
    protected void ApplyVerb(JobVerb verb)
    {
        lock (StateLock)
            ApplyVerbStateLocked(verb);
    }

    /// <summary>Queues the job's current record for the store (never waits for it).</summary>
    protected void Save() => Host.QueueSave(this);

    internal JobRecord ToRecord()
    {
        var info = GetInfo();
        return new JobRecord(Uid, Id, Type, info.Status, Device, Target, info.Error, Dismissed, info, CreatedAt, info.UpdatedAt, info.FinishedAt);
    }

    /// <summary>The status a snapshot shows: a dismissed job keeps showing <c>concluded</c> (null is never visible).</summary>
    protected string VisibleStatus()
    {
        lock (StateLock)
            return _status == JobStatus.Null ? JobNames.Of(JobStatus.Concluded) : JobNames.Of(_status);
    }

    // ---- verbs (the job manager calls these under the control lock) --------------------------

    internal void PauseControlLocked()
    {
        lock (StateLock)
        {
            ApplyVerbStateLocked(JobVerb.Pause);
            if (_userPaused)
                throw BlockErrors.Conflict("job-already-paused", "Job is already paused");
            _userPaused = true;
            _pauseCount++;
            _updatedAt = Now;
        }
        Wake.Set();
        Save();
    }

    internal void ResumeControlLocked()
    {
        lock (StateLock)
        {
            // QEMU checks this before the verb table.
            if (!_userPaused)
                throw BlockErrors.Conflict("job-not-paused", "Can't resume a job that was not paused");
            ApplyVerbStateLocked(JobVerb.Resume);
            _userPaused = false;
            _pauseCount--;
            _ioStatus = IoStatus.Ok;
            _updatedAt = Now;
        }
        Wake.Set();
        Save();
    }

    internal void CompleteControlLocked()
    {
        lock (StateLock)
        {
            ApplyVerbStateLocked(JobVerb.Complete);
            if (_cancelRequested)
                throw BlockErrors.Conflict("job-verb-not-allowed", $"The active block job '{Id}' cannot be completed");
            OnCompleteStateLocked();
            _completeAccepted = true;
            _updatedAt = Now;
        }
        Wake.Set();
        Save();
    }

    /// <summary>
    /// block-job-cancel: a soft cancel of a job the user paused is refused (qmp_block_job_cancel
    /// checks this before the verb table: resuming it behind the user's back is not what a soft
    /// cancel promises). Otherwise job_cancel: a paused job is resumed; the driver decides whether
    /// a soft cancel is really a force one (mirror: outside ready). A job already past its run
    /// (waiting, pending) is aborted now on a force cancel; a soft cancel of it is ignored, as in
    /// QEMU, when the driver keeps it soft.
    /// </summary>
    internal async Task CancelControlLockedAsync(bool force)
    {
        bool abortNow;
        lock (StateLock)
        {
            force = AcceptCancelStateLocked(force);
            var deferred = _status is JobStatus.Waiting or JobStatus.Pending;
            if (deferred && !force)
                return;
            _cancelRequested = true;
            _forceCancel |= force;
            abortNow = deferred;
            _updatedAt = Now;
        }
        CancelAccepted(force);
        if (abortNow)
            await RunAbortControlLockedAsync(null).ConfigureAwait(false);
        else
            Save();
    }

    /// <summary>
    /// The cancel of a job whose run is still going (created, running, paused, ready, standby):
    /// like QEMU's job_cancel_async it only sets the job's flags and wakes the run, so it needs no
    /// control lock, and must not wait for it: an operation holding that lock can be stuck behind
    /// the job's own I/O (a quiesce waiting for a write-blocking write to a target that does not
    /// answer) until this cancel abandons that I/O. Returns false, changing nothing, for any other
    /// status: the caller then runs <see cref="CancelControlLockedAsync"/> under the control lock.
    /// </summary>
    internal bool TryCancelRunning(bool force)
    {
        lock (StateLock)
        {
            if (_status is not (JobStatus.Created or JobStatus.Running or JobStatus.Paused or JobStatus.Ready or JobStatus.Standby))
                return false;
            force = AcceptCancelStateLocked(force);
            _cancelRequested = true;
            _forceCancel |= force;
            _updatedAt = Now;
        }
        CancelAccepted(force);
        Save();
        return true;
    }

    /// <summary>The checks and the resume of a cancel; returns whether it is a force cancel.</summary>
    private bool AcceptCancelStateLocked(bool force)
    {
        if (_userPaused && !force)
            throw BlockErrors.Conflict("job-paused", $"The block job for device '{Id}' is currently paused");
        ApplyVerbStateLocked(JobVerb.Cancel);
        force = OnCancelStateLocked(force);
        if (_userPaused)
        {
            _userPaused = false;
            _pauseCount--;
        }
        return force;
    }

    private void CancelAccepted(bool force)
    {
        Wake.Set();
        if (force)
            OnForceCancelled();
    }

    internal Task FinalizeControlLockedAsync()
    {
        ApplyVerb(JobVerb.Finalize);
        return RunFinalizeControlLockedAsync();
    }

    internal void DismissControlLocked()
    {
        ApplyVerb(JobVerb.Dismiss);
        RemoveDismissedControlLocked();
    }

    /// <summary>
    /// block-job-set-speed and/or block-job-change in one request, all or nothing: each verb is
    /// checked against the table before its argument (block_job_set_speed_locked), and the speed is
    /// applied only once the copy mode change (the driver's, which may refuse) went through.
    /// </summary>
    internal void ChangeControlLocked(long? speed, MirrorCopyMode? copyMode)
    {
        lock (StateLock)
        {
            if (speed is { } s)
            {
                ApplyVerbStateLocked(JobVerb.SetSpeed);
                if (s < 0)
                    throw BlockErrors.Invalid("invalid-speed", "Parameter 'speed' expects a non-negative value");
            }
            if (copyMode is { } mode)
            {
                ApplyVerbStateLocked(JobVerb.Change);
                OnChangeStateLocked(mode);
            }
            if (speed is { } newSpeed)
                Interlocked.Exchange(ref _speed, newSpeed);
            _updatedAt = Now;
        }
        if (speed is { } changed)
            OnSpeedChanged(changed);
        Wake.Set();
        Save();
    }

    /// <summary>Ends the job because the service stops: a force cancel that concludes with <paramref name="reason"/> as error.</summary>
    internal async Task StopForShutdownControlLockedAsync(string reason)
    {
        bool abortNow;
        lock (StateLock)
        {
            if (_status is JobStatus.Concluded or JobStatus.Null or JobStatus.Aborting or JobStatus.Undefined)
                return;
            _stopReason = reason;
            if (_userPaused)
            {
                _userPaused = false;
                _pauseCount--;
            }
            _cancelRequested = true;
            _forceCancel = true;
            abortNow = _status is JobStatus.Pending or JobStatus.Waiting;
        }
        CancelAccepted(force: true);
        if (abortNow)
            await RunAbortControlLockedAsync(reason).ConfigureAwait(false);
    }

    // ---- driver hooks -------------------------------------------------------------------------

    /// <summary>The job's work. Returns when done (or force-cancelled); throws to fail the job.</summary>
    protected abstract Task RunAsync();

    /// <summary>Graph changes of a successful job (QEMU's .prepare); throwing fails the job.</summary>
    protected virtual Task PrepareControlLockedAsync() => Task.CompletedTask;

    /// <summary>After a successful prepare (QEMU's .commit).</summary>
    protected virtual Task CommitControlLockedAsync() => Task.CompletedTask;

    /// <summary>The job failed or was cancelled (QEMU's .abort).</summary>
    protected virtual Task AbortControlLockedAsync() => Task.CompletedTask;

    /// <summary>After commit or abort, in both cases (QEMU's .clean).</summary>
    protected virtual Task CleanControlLockedAsync() => Task.CompletedTask;

    /// <summary>Maps a cancel request; returns whether it is a force cancel. Called under the state lock.</summary>
    protected virtual bool OnCancelStateLocked(bool force) => true;

    /// <summary>
    /// A force cancel was accepted (called outside the state lock): the driver abandons its I/O in
    /// flight so the run ends in bounded time whatever its nodes do (QEMU's bdrv_cancel_in_flight).
    /// </summary>
    protected virtual void OnForceCancelled()
    {
    }

    /// <summary>The complete verb was accepted by the table. Called under the state lock; throw to refuse.</summary>
    protected virtual void OnCompleteStateLocked() =>
        throw BlockErrors.Conflict("job-verb-not-allowed", $"The active block job '{Id}' cannot be completed");

    /// <summary>block-job-change. Called under the state lock; throw to refuse.</summary>
    protected virtual void OnChangeStateLocked(MirrorCopyMode copyMode) =>
        throw BlockErrors.Conflict("copy-mode-change", "Job type does not support change");

    protected virtual void OnSpeedChanged(long speed)
    {
    }

    /// <summary>Before the job enters paused/standby (mirror: wait for its in-flight I/O).</summary>
    protected virtual ValueTask OnPausingAsync() => ValueTask.CompletedTask;

    /// <summary>The body of BLOCK_JOB_* events: type, id, len, offset, speed.</summary>
    protected abstract (long Len, long Offset) EventProgress();

    // ---- the lifecycle ------------------------------------------------------------------------

    /// <summary>Called when the creating transaction committed: created, then started on its own task.</summary>
    internal void CreatedControlLocked() => Transition(JobStatus.Created);

    /// <summary>job_start: running at once (as QEMU does before entering the coroutine), the run on its own task.</summary>
    internal void StartControlLocked()
    {
        Transition(JobStatus.Running);
        _ = Task.Run(RunLifecycleAsync);
    }

    private async Task RunLifecycleAsync()
    {
        string? error = null;
        try
        {
            await RunAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ForceCancelled)
        {
            // I/O abandoned by the force cancel: the cancel path follows, not a failure.
        }
        catch (Exception e)
        {
            error = e is JobFailedException ? e.Message : IoErrorText.Of(e);
        }
        try
        {
            await Host.RunExitAsync(() => RunFinishedControlLockedAsync(error)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // A bug in the exit path must not leave the job hanging forever unconcluded.
            lock (StateLock)
            {
                _error ??= e.Message;
                _outcome ??= JobOutcome.Failed;
                _finishedAt ??= Now;
            }
            _concluded.TrySetResult();
        }
    }

    /// <summary>QEMU's job_completed: success waits for finalisation, anything else aborts.</summary>
    private async Task RunFinishedControlLockedAsync(string? error)
    {
        string? stop;
        bool force;
        lock (StateLock)
        {
            stop = _stopReason;
            force = _forceCancel;
        }
        error ??= stop;
        if (error is not null || force)
        {
            await RunAbortControlLockedAsync(error).ConfigureAwait(false);
            return;
        }
        Transition(JobStatus.Waiting);
        Transition(JobStatus.Pending);
        if (!AutoFinalize)
        {
            Host.Events.Publish("BLOCK_JOB_PENDING", new { type = Type, id = Id });
            return;
        }
        await RunFinalizeControlLockedAsync().ConfigureAwait(false);
    }

    /// <summary>job_finalize: prepare (graph changes), then commit and clean, or abort if prepare failed.</summary>
    private async Task RunFinalizeControlLockedAsync()
    {
        try
        {
            await PrepareControlLockedAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await RunAbortControlLockedAsync(e is JobFailedException ? e.Message : IoErrorText.Of(e)).ConfigureAwait(false);
            return;
        }
        await CommitControlLockedAsync().ConfigureAwait(false);
        await CleanControlLockedAsync().ConfigureAwait(false);
        lock (StateLock)
        {
            // Success after a soft cancel (and no complete): the point-in-time copy, no pivot.
            var softCancelled = _cancelRequested && !_completeAccepted;
            _outcome = softCancelled ? JobOutcome.Cancelled : JobOutcome.Completed;
            _cancelMode = softCancelled ? JobCancelMode.Soft : null;
        }
        PublishEnd("BLOCK_JOB_COMPLETED", null);
        Conclude();
    }

    /// <summary>
    /// The abort path: aborting, the driver's abort and clean, then CANCELLED or COMPLETED with the
    /// error. No error means a force cancel, which concludes with ECANCELED's sentence as its error,
    /// as QEMU's job_update_rc does (the CANCELLED event itself carries none).
    /// </summary>
    private async Task RunAbortControlLockedAsync(string? error)
    {
        lock (StateLock)
        {
            if (_status is JobStatus.Aborting or JobStatus.Concluded or JobStatus.Null)
                return;
            _error = error ?? CanceledError;
            // No error of its own: a force cancel (a shutdown or a failure passes its reason).
            _outcome = error is null ? JobOutcome.Cancelled : JobOutcome.Failed;
            _cancelMode = error is null ? JobCancelMode.Force : null;
            TransitionStateLocked(JobStatus.Aborting);
        }
        await AbortControlLockedAsync().ConfigureAwait(false);
        await CleanControlLockedAsync().ConfigureAwait(false);
        if (error is null)
            PublishEnd("BLOCK_JOB_CANCELLED", null);
        else
            PublishEnd("BLOCK_JOB_COMPLETED", error);
        Conclude();
    }

    private void PublishEnd(string name, string? error)
    {
        var (len, offset) = EventProgress();
        object data = error is null
            ? new { type = Type, id = Id, len, offset, speed = Speed }
            : new { type = Type, id = Id, len, offset, speed = Speed, error };
        Host.Events.Publish(name, data);
    }

    /// <summary>Publishes BLOCK_JOB_READY (drivers call it once, on the first running → ready).</summary>
    protected void PublishReady()
    {
        var (len, offset) = EventProgress();
        Host.Events.Publish("BLOCK_JOB_READY", new { type = Type, id = Id, len, offset, speed = Speed });
    }

    private void Conclude()
    {
        lock (StateLock)
        {
            _finishedAt = Now;
            TransitionStateLocked(JobStatus.Concluded);
        }
        _concluded.TrySetResult();
        if (AutoDismiss)
            RemoveDismissedControlLocked();
    }

    private void RemoveDismissedControlLocked()
    {
        lock (StateLock)
        {
            _dismissed = true;
            TransitionStateLocked(JobStatus.Null);
        }
        Host.DismissedControlLocked(this);
    }

    /// <summary>
    /// QEMU's job_pause_point: if a pause is requested, let the driver settle (no I/O in flight),
    /// enter paused/standby, wait for the resume (or a force cancel), and come back.
    /// </summary>
    protected async ValueTask PausePointAsync()
    {
        if (!PauseWanted())
            return;
        await OnPausingAsync().ConfigureAwait(false);
        JobStatus resumeTo;
        lock (StateLock)
        {
            if (!(_pauseCount > 0 && !_forceCancel))
                return;
            resumeTo = _status;
            TransitionStateLocked(_status == JobStatus.Ready ? JobStatus.Standby : JobStatus.Paused);
        }
        while (PauseWanted())
            await Wake.WaitAsync().ConfigureAwait(false);
        Transition(resumeTo);
    }

    private bool PauseWanted()
    {
        lock (StateLock)
            return _pauseCount > 0 && !_forceCancel;
    }

    /// <summary>The error action "stop": a user pause with the io-status set (block_job_error_action).</summary>
    protected void StopOnError(IoStatus status)
    {
        lock (StateLock)
        {
            if (!_userPaused)
            {
                _userPaused = true;
                _pauseCount++;
                _ioStatus = status;
            }
            _updatedAt = Now;
        }
        Wake.Set();
    }

    /// <summary>A job loaded from the store: it shows its recorded end without running (no transition, no event).</summary>
    internal void RestoreConcluded(string? error, DateTime updatedAt, DateTime? finishedAt, bool dismissed,
        JobOutcome outcome, JobCancelMode? cancelMode, DateTime? readyAt)
    {
        lock (StateLock)
        {
            _status = dismissed ? JobStatus.Null : JobStatus.Concluded;
            _error = error;
            _outcome = outcome;
            _cancelMode = cancelMode;
            _readyAt = readyAt;
            _updatedAt = updatedAt;
            _finishedAt = finishedAt;
            _dismissed = dismissed;
        }
        _concluded.TrySetResult();
    }

    /// <summary>Marks the job as touched now (snapshots show it).</summary>
    protected void Touch()
    {
        lock (StateLock)
            _updatedAt = Now;
    }
}
