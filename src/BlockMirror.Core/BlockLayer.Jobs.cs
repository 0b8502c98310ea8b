using BlockMirror.Core.Jobs;
using BlockMirror.Core.State;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core;

/// <summary>The job manager part of the block layer: the job registry, its verbs and the job store.</summary>
public sealed partial class BlockLayer
{
    private readonly List<Job> _jobs = [];
    private readonly List<Job> _jobHistory = [];
    private readonly Lock _jobSaveLock = new();
    private Task _jobSaveTail = Task.CompletedTask;

    /// <summary>Where jobs are written through; null = no job persistence.</summary>
    public IJobStore? JobStore { get; set; }

    /// <summary>The jobs not dismissed, in creation order.</summary>
    public IReadOnlyList<Job> Jobs
    {
        get
        {
            lock (_jobs)
                return [.. _jobs];
        }
    }

    /// <summary>Dismissed jobs, oldest first (GET /jobs?include=dismissed).</summary>
    public IReadOnlyList<Job> JobHistory
    {
        get
        {
            lock (_jobs)
                return [.. _jobHistory];
        }
    }

    /// <summary>The active job with that id, or with <paramref name="includeDismissed"/> the latest dismissed one.</summary>
    public Job? FindJob(string id, bool includeDismissed = false)
    {
        lock (_jobs)
        {
            var job = _jobs.FirstOrDefault(j => j.Id == id);
            if (job is null && includeDismissed)
                job = _jobHistory.LastOrDefault(j => j.Id == id);
            return job;
        }
    }

    public Job GetJob(string id, bool includeDismissed = false) =>
        FindJob(id, includeDismissed) ?? throw BlockErrors.NotFound("job-not-found", "Job not found");

    // ---- verbs --------------------------------------------------------------------------------

    /// <summary>blockdev-mirror: a one-action transaction with <see cref="MirrorStartAction"/>.</summary>
    public async Task<MirrorJob> StartMirrorAsync(MirrorOptions options, CancellationToken cancellationToken = default)
    {
        try
        {
            var results = await TransactionAsync([new MirrorStartAction(options)], cancellationToken).ConfigureAwait(false);
            return (MirrorJob)results[0]!;
        }
        catch (TransactionFailedException e)
        {
            throw e.Error;
        }
    }

    public Task<Job> PauseJobAsync(string id, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.UserPause(), cancellationToken);

    public Task<Job> ResumeJobAsync(string id, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.UserResume(), cancellationToken);

    public Task<Job> CompleteJobAsync(string id, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.Complete(), cancellationToken);

    public Task<Job> SetJobSpeedAsync(string id, long speed, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.SetSpeed(speed), cancellationToken);

    /// <summary>block-job-change: only background → write-blocking (<c>copy-mode-change</c> otherwise).</summary>
    public Task<Job> ChangeJobAsync(string id, MirrorCopyMode copyMode, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.Change(null, copyMode), cancellationToken);

    /// <summary>set-speed and block-job-change together (PATCH), all or nothing: a refusal of either changes nothing.</summary>
    public Task<Job> ChangeJobAsync(string id, long? speed, MirrorCopyMode? copyMode, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.Change(speed, copyMode), cancellationToken);

    public Task<Job> DismissJobAsync(string id, CancellationToken cancellationToken = default) =>
        JobVerbAsync(id, job => job.Dismiss(), cancellationToken);

    /// <summary>
    /// Cancel: outside ready always an abort; in ready a soft cancel converges without pivot unless
    /// <paramref name="force"/>. A soft cancel of a user-paused job is refused (<c>job-paused</c>).
    /// A job still in its run is cancelled without the control lock (see <see cref="Job.TryCancelRunning"/>),
    /// so a force cancel ends it in bounded time even while another operation waits on its I/O.
    /// </summary>
    public async Task<Job> CancelJobAsync(string id, bool force, CancellationToken cancellationToken = default)
    {
        if (FindJob(id) is { } running && running.TryCancelRunning(force))
            return running;
        return await ControlAsync(async () =>
        {
            var job = GetJob(id);
            await job.CancelAsync(force).ConfigureAwait(false);
            return job;
        }, cancellationToken).ConfigureAwait(false);
    }

    public Task<Job> FinalizeJobAsync(string id, CancellationToken cancellationToken = default) =>
        ControlAsync(async () =>
        {
            var job = GetJob(id);
            await job.FinalizeAsync().ConfigureAwait(false);
            return job;
        }, cancellationToken);

    private Task<Job> JobVerbAsync(string id, Action<Job> verb, CancellationToken cancellationToken) =>
        ControlAsync(() =>
        {
            var job = GetJob(id);
            verb(job);
            return Task.FromResult(job);
        }, cancellationToken);

    // ---- registry (control lock held) ---------------------------------------------------------

    internal void RegisterJobUnlocked(Job job)
    {
        lock (_jobs)
            _jobs.Add(job);
    }

    internal void UnregisterJobUnlocked(Job job)
    {
        lock (_jobs)
            _jobs.Remove(job);
    }

    internal void JobDismissedUnlocked(Job job)
    {
        lock (_jobs)
        {
            _jobs.Remove(job);
            _jobHistory.Add(job);
        }
    }

    /// <summary>
    /// A job's own task finishing its lifecycle takes the control lock like a verb; unlike
    /// <see cref="ControlAsync{T}"/> it also runs while the service stops, so a job never stays
    /// half-finished.
    /// </summary>
    internal async Task JobControlAsync(Func<Task> operation)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            await operation().ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    // ---- persistence ----------------------------------------------------------------------------

    /// <summary>Queues the job's record for the store, in order, without waiting; failures are dropped.</summary>
    internal void EnqueueJobSave(Job job)
    {
        var store = JobStore;
        if (store is null)
            return;
        EnqueueJobSave(store, job.ToRecord());
    }

    private void EnqueueJobSave(IJobStore store, JobRecord record)
    {
        lock (_jobSaveLock)
            _jobSaveTail = SaveAfterAsync(_jobSaveTail, store, record);
    }

    private static async Task SaveAfterAsync(Task previous, IJobStore store, JobRecord record)
    {
        await previous.ConfigureAwait(false);
        try
        {
            await store.SaveJobAsync(record).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The record is advisory while the process lives; the next save carries the state again.
        }
    }

    /// <summary>Waits until every queued job save has been attempted.</summary>
    public Task FlushJobSavesAsync()
    {
        lock (_jobSaveLock)
            return _jobSaveTail;
    }

    /// <summary>
    /// At start, after <see cref="LoadAsync"/>: jobs the store shows as not concluded were cut off
    /// by the stop; they are recorded as concluded with the error "The service stopped while the
    /// job was &lt;status&gt;" (dismissed at once when they had auto-dismiss), their working bitmap
    /// re-enabled so a new mirror with it resumes. Concluded jobs stay listed until dismissed.
    /// </summary>
    public Task RecoverJobsAsync(CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        var store = JobStore;
        if (store is null)
            return;
        var records = await store.LoadJobsAsync(cancellationToken).ConfigureAwait(false);
        foreach (var record in records.OrderBy(r => r.CreatedAt))
        {
            var status = JobNames.ParseStatus(record.Status);
            var restored = record;
            if (!record.Dismissed && status is not JobStatus.Concluded)
            {
                var error = $"The service stopped while the job was {record.Status}";
                var now = UtcNow;
                var dismissed = record.Snapshot.AutoDismiss;
                var info = record.Snapshot with { Status = "concluded", Error = error, Ready = false, Paused = false, UpdatedAt = now, FinishedAt = now };
                restored = record with { Status = "concluded", Error = error, Dismissed = dismissed, Snapshot = info, UpdatedAt = now, FinishedAt = now };
                await store.SaveJobAsync(restored, cancellationToken).ConfigureAwait(false);
                await ReleaseWorkingBitmapAsync(record.Snapshot, cancellationToken).ConfigureAwait(false);
            }
            var job = new RestoredJob(this, restored);
            lock (_jobs)
                (restored.Dismissed ? _jobHistory : _jobs).Add(job);
        }
    }, cancellationToken);

    /// <summary>A bitmap an interrupted job held as its working bitmap records writes again.</summary>
    private async Task ReleaseWorkingBitmapAsync(JobInfo info, CancellationToken cancellationToken)
    {
        if (info.Bitmap is not { } name || info.BitmapMode != JobNames.Of(BitmapMode.Always))
            return;
        if (FindNode(info.Device) is not { } node || node.FindBitmap(name) is not { } bitmap)
            return;
        if (bitmap.Inconsistent || !bitmap.Disabled)
            return;
        bitmap.Disabled = false;
        await SaveBitmapAsync(node, bitmap, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Before <see cref="StopAsync"/>: every job still running is stopped (in-flight I/O finished,
    /// filters removed, working bitmaps released) and concluded with an error saying the service
    /// stopped, then the queued job saves are flushed. Each wait is bounded by <see cref="StopWait"/>:
    /// a job that does not conclude in time (a target that never answers) is listed in
    /// <see cref="StopFailures"/> and left behind, so the clean stop of the nodes still happens; the
    /// next start records it as cut off by the stop.
    /// </summary>
    public async Task ShutdownJobsAsync(CancellationToken cancellationToken = default)
    {
        var running = new List<Job>();
        var signalled = JobControlAsync(async () =>
        {
            foreach (var job in Jobs)
            {
                var status = job.Status;
                if (status is JobStatus.Concluded or JobStatus.Null)
                    continue;
                running.Add(job);
                await job.StopForShutdownAsync($"The service stopped while the job was {JobNames.Of(status)}").ConfigureAwait(false);
            }
        });
        if (!await WithinStopWaitAsync(signalled, cancellationToken).ConfigureAwait(false))
        {
            StopFailures.Add($"jobs: a control operation did not finish within {StopWait.TotalSeconds:0.#} s, so running jobs were not told to stop");
            return;
        }
        foreach (var job in running)
        {
            if (!await WithinStopWaitAsync(job.Concluded, cancellationToken).ConfigureAwait(false))
                StopFailures.Add($"job '{job.Id}': did not stop within {StopWait.TotalSeconds:0.#} s (its I/O does not complete); left running");
        }
        if (!await WithinStopWaitAsync(FlushJobSavesAsync(), cancellationToken).ConfigureAwait(false))
            StopFailures.Add($"jobs: their records were not stored within {StopWait.TotalSeconds:0.#} s");
    }

    /// <summary>Waits for <paramref name="task"/> up to <see cref="StopWait"/>; false when it did not finish in time.</summary>
    private async Task<bool> WithinStopWaitAsync(Task task, CancellationToken cancellationToken)
    {
        try
        {
            await task.WaitAsync(StopWait, Time, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }
}
