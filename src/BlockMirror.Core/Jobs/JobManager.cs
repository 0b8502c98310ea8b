using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// The job registry (QEMU's job list): the listed jobs and the history of dismissed ones, the verbs
/// (each under the control lock), the queue that writes job records to the store in order, the
/// recovery of jobs a stop cut off and the shutdown of running ones. It is the <see cref="IJobHost"/>
/// every job kind talks to; it knows no job kind.
/// </summary>
public sealed partial class JobManager(
    ControlLock control, IEventSink events, TimeProvider time, NodeRegistry nodes, BitmapPersistence persistence,
    ImageReplacementCheck replacements, ILogger<JobManager> logger, ILogger<Job> jobLogger) : IJobHost
{
    private readonly List<Job> _jobs = [];
    private readonly List<Job> _history = [];
    private readonly Lock _saveQueueLock = new();
    private Task _saveQueueTail = Task.CompletedTask;
    private long _failedSaves;

    /// <summary>Where jobs are written through; null = no job persistence.</summary>
    public IJobStore? Store { get; set; }

    public TimeProvider Time => time;

    public ILogger Logger => jobLogger;

    public IEventSink Events => events;

    public bool StoresJobs => Store is not null;

    /// <summary>Job records the store refused since the start (an operator must act: the database is failing).</summary>
    public long FailedSaves => Interlocked.Read(ref _failedSaves);

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
    public IReadOnlyList<Job> History
    {
        get
        {
            lock (_jobs)
                return [.. _history];
        }
    }

    /// <summary>The active job with that id, or with <paramref name="includeDismissed"/> the latest dismissed one.</summary>
    public Job? FindJob(string id, bool includeDismissed = false)
    {
        lock (_jobs)
        {
            var job = _jobs.FirstOrDefault(j => j.Id == id);
            if (job is null && includeDismissed)
                job = _history.LastOrDefault(j => j.Id == id);
            return job;
        }
    }

    public Job GetJob(string id, bool includeDismissed = false) =>
        FindJob(id, includeDismissed) ?? throw BlockErrors.NotFound("job-not-found", "Job not found");

    /// <summary>Whether <paramref name="bitmap"/> of <paramref name="node"/> is the working bitmap of the job holding the node.</summary>
    public bool IsWorkingBitmap(BlockNode node, DirtyBitmap bitmap) =>
        node.JobId is { } id && FindJob(id) is { } job && job.WorksFrom(bitmap);

    // ---- verbs (one body: the job looked up and the verb applied under the control lock) ---------

    /// <summary>Runs <paramref name="verb"/> on the job <paramref name="id"/> under the control lock; returns the job.</summary>
    public Task<Job> RunVerbAsync(string id, Action<Job> verb, CancellationToken cancellationToken) =>
        RunVerbAsync(id, job =>
        {
            verb(job);
            return Task.CompletedTask;
        }, cancellationToken);

    /// <inheritdoc cref="RunVerbAsync(string, Action{Job}, CancellationToken)"/>
    public Task<Job> RunVerbAsync(string id, Func<Job, Task> verb, CancellationToken cancellationToken) =>
        control.RunAsync(async () =>
        {
            var job = GetJob(id);
            await verb(job).ConfigureAwait(false);
            return job;
        }, cancellationToken);

    /// <summary>
    /// Cancel: a job still in its run is cancelled without the control lock (see
    /// <see cref="Job.TryCancelRunning"/>), so a force cancel ends it in bounded time even while another
    /// operation waits on its I/O; any other is cancelled as a verb.
    /// </summary>
    public async Task<Job> CancelAsync(string id, bool force, CancellationToken cancellationToken)
    {
        if (FindJob(id) is { } running && running.TryCancelRunning(force))
            return running;
        return await RunVerbAsync(id, job => job.CancelControlLockedAsync(force), cancellationToken).ConfigureAwait(false);
    }

    // ---- IJobHost -----------------------------------------------------------------------------------

    public void RegisterControlLocked(Job job)
    {
        lock (_jobs)
            _jobs.Add(job);
    }

    public void UnregisterControlLocked(Job job)
    {
        lock (_jobs)
            _jobs.Remove(job);
    }

    public void DismissedControlLocked(Job job)
    {
        lock (_jobs)
        {
            _jobs.Remove(job);
            _history.Add(job);
        }
    }

    public Task RunExitAsync(Func<Task> exitControlLocked) => control.RunEvenWhileStoppingAsync(exitControlLocked);

    public Task<IDisposable> QuiesceAsync(BlockNode node, CancellationToken cancellationToken = default) =>
        node.QuiesceGate.QuiesceAsync(cancellationToken);

    public bool IsImageReplacedControlLocked(BlockNode node) => replacements.IsReplacedControlLocked(node);

    public async Task<IBlockImage> PivotControlLockedAsync(BlockNode device, BlockNode target, CancellationToken cancellationToken = default)
    {
        var old = (device.Image, device.Driver, device.Path, device.Uri);
        device.Pivot(target.Image, target.Driver, target.Path, target.Uri);
        try
        {
            await persistence.StorePivotControlLockedAsync(device, target.Name, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // The device's writes are still quiesced: none went to the new image.
            device.Pivot(old.Image, old.Driver, old.Path, old.Uri);
            throw;
        }
        nodes.ForgetControlLocked(target.Name);
        return old.Image;
    }

    public Task CheckpointControlLockedAsync(BlockNode node, DirtyBitmap bitmap, CancellationToken cancellationToken = default) =>
        persistence.CheckpointNodeControlLockedAsync(node, bitmap, cancellationToken);

    // ---- the save queue -----------------------------------------------------------------------------

    public void QueueSave(Job job)
    {
        if (Store is not { } store)
            return;
        var record = job.ToRecord();
        lock (_saveQueueLock)
            _saveQueueTail = SaveAfterAsync(_saveQueueTail, store, record);
    }

    private async Task SaveAfterAsync(Task previous, IJobStore store, JobRecord record)
    {
        await previous.ConfigureAwait(false);
        try
        {
            await store.SaveJobAsync(record).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // The record is advisory while the process lives; the next save carries the state again.
            Interlocked.Increment(ref _failedSaves);
            LogSaveFailed(logger, e, record.Id, record.Status);
        }
    }

    /// <summary>Waits until every queued job save has been attempted.</summary>
    public Task FlushSavesAsync()
    {
        lock (_saveQueueLock)
            return _saveQueueTail;
    }

    // ---- start and stop -------------------------------------------------------------------------------

    /// <summary>
    /// At start, after the load: jobs the store shows as not concluded were cut off by the stop; they
    /// are recorded as concluded with the error "The service stopped while the job was &lt;status&gt;"
    /// (dismissed at once when they had auto-dismiss), their working bitmap re-enabled so a new
    /// mirror with it resumes. Concluded jobs stay listed until dismissed.
    /// </summary>
    public async Task RecoverControlLockedAsync(CancellationToken cancellationToken)
    {
        if (Store is not { } store)
            return;
        var records = await store.LoadJobsAsync(cancellationToken).ConfigureAwait(false);
        foreach (var record in records.OrderBy(r => r.CreatedAt))
        {
            var status = JobNames.ParseStatus(record.Status);
            var restored = record;
            if (!record.Dismissed && status is not JobStatus.Concluded)
            {
                var error = $"The service stopped while the job was {record.Status}";
                var now = time.GetUtcNow().UtcDateTime;
                var dismissed = record.Snapshot.AutoDismiss;
                var info = record.Snapshot with { Status = "concluded", Error = error, Ready = false, Paused = false, UpdatedAt = now, FinishedAt = now };
                restored = record with { Status = "concluded", Error = error, Dismissed = dismissed, Snapshot = info, UpdatedAt = now, FinishedAt = now };
                await store.SaveJobAsync(restored, cancellationToken).ConfigureAwait(false);
                await ReleaseWorkingBitmapAsync(record.Snapshot, cancellationToken).ConfigureAwait(false);
            }
            var job = new RestoredJob(this, restored);
            lock (_jobs)
                (restored.Dismissed ? _history : _jobs).Add(job);
        }
    }

    /// <summary>A bitmap an interrupted job held as its working bitmap records writes again.</summary>
    private async Task ReleaseWorkingBitmapAsync(JobInfo info, CancellationToken cancellationToken)
    {
        if (info.Bitmap is not { } name || info.BitmapMode != JobNames.Of(BitmapMode.Always))
            return;
        if (nodes.FindNode(info.Device) is not { } node || node.FindBitmap(name) is not { } bitmap)
            return;
        if (bitmap.Inconsistent || !bitmap.Disabled)
            return;
        bitmap.Disabled = false;
        await persistence.CheckpointNodeControlLockedAsync(node, bitmap, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Before the layer's clean stop: every job still running is stopped (in-flight I/O finished,
    /// filters removed, working bitmaps released) and concluded with an error saying the service
    /// stopped, then the queued job saves are flushed. Each wait is bounded by <paramref name="stopWait"/>:
    /// a job that does not conclude in time (a target that never answers) is listed in
    /// <paramref name="failures"/> and left behind, so the clean stop of the nodes still happens; the
    /// next start records it as cut off by the stop.
    /// </summary>
    public async Task ShutdownAsync(TimeSpan stopWait, List<string> failures, CancellationToken cancellationToken)
    {
        var running = new List<Job>();
        var signalled = control.RunEvenWhileStoppingAsync(async () =>
        {
            foreach (var job in Jobs)
            {
                var status = job.Status;
                if (status is JobStatus.Concluded or JobStatus.Null)
                    continue;
                running.Add(job);
                await job.StopForShutdownControlLockedAsync($"The service stopped while the job was {JobNames.Of(status)}").ConfigureAwait(false);
            }
        });
        if (!await WithinAsync(signalled, stopWait, cancellationToken).ConfigureAwait(false))
        {
            failures.Add($"jobs: a control operation did not finish within {stopWait.TotalSeconds:0.#} s, so running jobs were not told to stop");
            return;
        }
        foreach (var job in running)
        {
            if (!await WithinAsync(job.Concluded, stopWait, cancellationToken).ConfigureAwait(false))
                failures.Add($"job '{job.Id}': did not stop within {stopWait.TotalSeconds:0.#} s (its I/O does not complete); left running");
        }
        if (!await WithinAsync(FlushSavesAsync(), stopWait, cancellationToken).ConfigureAwait(false))
            failures.Add($"jobs: their records were not stored within {stopWait.TotalSeconds:0.#} s");
    }

    /// <summary>Waits for <paramref name="task"/> up to <paramref name="wait"/>; false when it did not finish in time.</summary>
    private async Task<bool> WithinAsync(Task task, TimeSpan wait, CancellationToken cancellationToken)
    {
        try
        {
            await task.WaitAsync(wait, time, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    [LoggerMessage(1, LogLevel.Error, "Job '{Job}': its record ({Status}) could not be stored; the next save carries its state again")]
    private static partial void LogSaveFailed(ILogger logger, Exception exception, string job, string status);
}
