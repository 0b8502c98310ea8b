using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Transactions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Core;

/// <summary>
/// The block layer as the host uses it: one object over QEMU's global state, each part of which
/// lives in a class of its own — <see cref="NodeRegistry"/> (nodes, exports, names),
/// <see cref="ImageOpener"/> (drivers by name), <see cref="BitmapPersistence"/> (proof rules at
/// load, checkpoints, the journal hook, the fold, journal repair, the clean stop's checkpoint),
/// <see cref="ImageReplacementCheck"/>, <see cref="BitmapLimits"/>, <see cref="TransactionRunner"/>
/// and <see cref="JobManager"/> (the job registry, verbs and the job-save queue). Control-plane
/// operations run one at a time under the <see cref="ControlLock"/>; the data path runs concurrently
/// on the nodes. Every change is written through to the <see cref="IBlockStore"/> before it returns.
/// The lock order is written once, in docs/architecture.md.
/// </summary>
public sealed class BlockLayer : IAsyncDisposable
{
    private readonly ControlLock _control = new();
    private readonly NodeRegistry _nodes;
    private readonly ImageOpener _opener;
    private readonly ImageReplacementCheck _replacements;
    private readonly BitmapPersistence _persistence;
    private readonly BitmapLimits _limits;
    private readonly TransactionRunner _transactions;
    private readonly JobManager _jobs;
    private TimeSpan _autoCopyModeWindow = MirrorJob.DefaultAutoCopyModeWindow;

    public BlockLayer(ImageRoot root, IBlockStore store, IEventSink events, TimeProvider time, IRemoteImageOpener? remote = null,
        ILoggerFactory? loggers = null)
    {
        Root = root;
        Store = store;
        Events = events;
        Time = time;
        loggers ??= NullLoggerFactory.Instance;
        _opener = new ImageOpener(new RawImageDriver(root), new NbdImageDriver(remote), new Qcow2ImageDriver(root));
        _replacements = new ImageReplacementCheck(root, time, loggers.CreateLogger<ImageReplacementCheck>());
        _nodes = new NodeRegistry(root, _opener, store, _replacements, time, loggers.CreateLogger<NodeRegistry>());
        _persistence = new BitmapPersistence(store, _control, _nodes, _replacements, time, loggers.CreateLogger<BitmapPersistence>());
        _jobs = new JobManager(_control, events, time, _nodes, _persistence, _replacements,
            loggers.CreateLogger<JobManager>(), loggers.CreateLogger<Job>());
        _limits = new BitmapLimits(_nodes, () => _jobs.Jobs, () => _persistence.KeepsShadows);
        _transactions = new TransactionRunner(this, _control, _nodes, _persistence);
        _nodes.Attaching = _persistence.Attach;
        _persistence.IsJobWorkingBitmap = _jobs.IsWorkingBitmap;
    }

    public ImageRoot Root { get; }

    public IBlockStore Store { get; }

    public IEventSink Events { get; }

    public TimeProvider Time { get; }

    public DateTime UtcNow => Time.GetUtcNow().UtcDateTime;

    /// <summary>What a job kind talks to (the job manager).</summary>
    internal IJobHost JobHost => _jobs;

    /// <summary>
    /// The write-ahead journal of persistent bitmaps (set before <see cref="LoadAsync"/>); null =
    /// none, and then, as in QEMU, a persistent bitmap is only exact after a clean stop.
    /// </summary>
    public IBitmapJournal? Journal
    {
        get => _persistence.Journal;
        init => _persistence.Journal = value;
    }

    /// <summary>The activity log of persistent bitmaps: extent size and hot bound (set before <see cref="LoadAsync"/>).</summary>
    public BitmapActivityLogOptions ActivityLog
    {
        get => _persistence.ActivityLog;
        init => _persistence.ActivityLog = value;
    }

    /// <summary>The activity log's counters: hot extents, activations, evictions, relogs.</summary>
    public ActivityLogStatistics ActivityLogStatistics => _persistence.ActivityLogStatistics;

    /// <summary>Extents of <paramref name="bitmap"/> hot now in the activity log.</summary>
    public int HotExtentsOf(DirtyBitmap bitmap) => _persistence.HotExtentsOf(bitmap);

    /// <inheritdoc cref="BitmapPersistence.RecoverySuperset"/>
    public List<(string Node, string Bitmap, long Granules, long Bytes)> RecoverySuperset => _persistence.RecoverySuperset;

    /// <summary>Where jobs are written through; null = no job persistence.</summary>
    public IJobStore? JobStore
    {
        get => _jobs.Store;
        set => _jobs.Store = value;
    }

    /// <summary>Raised (under the control lock) when a node is added, so the host can wire hooks.</summary>
    public event Action<BlockNode>? NodeAdded
    {
        add => _nodes.NodeAdded += value;
        remove => _nodes.NodeAdded -= value;
    }

    /// <summary>Runs a control-plane operation alone (QEMU's big lock).</summary>
    public Task<T> ControlAsync<T>(Func<Task<T>> operation, CancellationToken cancellationToken = default) =>
        _control.RunAsync(operation, cancellationToken);

    public Task ControlAsync(Func<Task> operation, CancellationToken cancellationToken = default) =>
        _control.RunAsync(operation, cancellationToken);

    // ---- start and stop -----------------------------------------------------------------------

    /// <summary>
    /// Rebuilds the state from the store (<see cref="BitmapPersistence"/>: nodes reopened by their
    /// drivers, persistent bitmaps restored or found inconsistent; then the NBD exports served
    /// again, or kept unserved with the reason), then starts the background image check.
    /// </summary>
    public Task LoadAsync(CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        await _persistence.LoadControlLockedAsync(ReopenAsync, cancellationToken).ConfigureAwait(false);
        // After the nodes and their bitmaps, before any job is recovered: an export holds its bitmaps
        // busy, as it did before the stop, and no job could have held them then.
        await _nodes.RestoreExportsControlLockedAsync(LoadFailures, cancellationToken).ConfigureAwait(false);
        _replacements.Start(CheckImagesAsync, () => _control.Stopped);
    }, cancellationToken);

    /// <summary>A stored node, its image opened again by its driver.</summary>
    private async Task<BlockNode> ReopenAsync(NodeRecord record, CancellationToken cancellationToken)
    {
        var opened = await _opener.OpenAsync(record.Driver, new ImageRequest(record.Path, record.Uri, null, record.ReadOnly, CacheDirect: record.CacheDirect), cancellationToken).ConfigureAwait(false);
        return new BlockNode(record.Name, record.Driver, opened.Image, record.Path, record.Uri, record.ReadOnly, record.CreatedAt);
    }

    /// <summary>Problems met while loading (images that could not be reopened).</summary>
    public List<string> LoadFailures => _persistence.LoadFailures;

    /// <summary>Why each bitmap restored inconsistent at the last load ("node/bitmap: reason").</summary>
    public List<string> InconsistentAtLoad => _persistence.InconsistentAtLoad;

    /// <summary>
    /// How long a stop waits for one thing (the control lock, the jobs to conclude, one node's
    /// writes in flight) before it goes on without it: a stop must end, and in time for a service
    /// manager's grace period (docker stop: 10 s).
    /// </summary>
    public TimeSpan StopWait { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>What the last stop could not do cleanly ("node 'a': reason", "job 'm': reason"), for the host's log.</summary>
    public List<string> StopFailures { get; } = [];

    /// <summary>
    /// Clean stop: node by node, with its writes quiesced, flush and close its image, then checkpoint
    /// its persistent bitmaps with the in-use flag cleared and the image's stamp. After this no
    /// control operation runs. A node that cannot be stopped (writes that do not drain within
    /// <see cref="StopWait"/>, a bitmap that cannot be serialized or stored) is skipped and listed in
    /// <see cref="StopFailures"/>, and every other node still gets its clean stop.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _replacements.StopAsync().ConfigureAwait(false);
        if (!await _control.TryEnterForStopAsync(StopWait, cancellationToken).ConfigureAwait(false))
        {
            StopFailures.Add($"a control operation did not finish within {StopWait.TotalSeconds:0.#} s: no node was stopped cleanly " +
                "(persistent bitmaps keep their last checkpoint and the journal)");
            return;
        }
        try
        {
            if (!_control.MarkStoppedControlLocked())
                return;
            foreach (var node in Nodes)
                await _persistence.StopNodeControlLockedAsync(node, StopWait, StopFailures, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _control.ExitStop();
        }
    }

    /// <summary>
    /// Stops cleanly if <see cref="StopAsync"/> did not run yet (a host may dispose its services
    /// before it stops them). The control lock is not disposed: a late caller gets a clean
    /// "stopping" refusal instead of an ObjectDisposedException.
    /// </summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    // ---- nodes and exports (NodeRegistry) ---------------------------------------------------------

    /// <summary>A snapshot of the nodes, in creation order.</summary>
    public IReadOnlyList<BlockNode> Nodes => _nodes.Nodes;

    public IReadOnlyList<BlockExport> Exports => _nodes.Exports;

    public BlockNode? FindNode(string name) => _nodes.FindNode(name);

    public BlockNode GetNode(string name) => _nodes.GetNode(name);

    public BlockExport? FindExport(string name) => _nodes.FindExport(name);

    public Task<BlockNode> CreateNodeAsync(NodeSpec spec, CancellationToken cancellationToken = default) =>
        ControlAsync(async () =>
        {
            var node = await _nodes.CreateControlLockedAsync(spec, cancellationToken).ConfigureAwait(false);
            await _persistence.AdoptImageBitmapsControlLockedAsync(node, cancellationToken).ConfigureAwait(false);
            return node;
        }, cancellationToken);

    public Task DeleteNodeAsync(string name, bool deleteImage, CancellationToken cancellationToken = default) =>
        ControlAsync(() => _nodes.DeleteControlLockedAsync(name, deleteImage, cancellationToken), cancellationToken);

    /// <summary>Stored exports that could not be served again at the last load (why: <see cref="UnservedExport.Code"/>).</summary>
    public IReadOnlyList<UnservedExport> UnservedExports => _nodes.UnservedExports;

    public UnservedExport? FindUnservedExport(string name) => _nodes.FindUnservedExport(name);

    /// <inheritdoc cref="NodeRegistry.AddExportControlLockedAsync"/>
    public Task<BlockExport> AddExportAsync(string name, string nodeName, bool writable, IReadOnlyList<string> bitmaps, CancellationToken cancellationToken = default) =>
        ControlAsync(() => _nodes.AddExportControlLockedAsync(name, nodeName, writable, bitmaps, cancellationToken), cancellationToken);

    /// <inheritdoc cref="NodeRegistry.RemoveExportControlLockedAsync"/>
    public Task<string> RemoveExportAsync(string name, CancellationToken cancellationToken = default) =>
        ControlAsync(() => _nodes.RemoveExportControlLockedAsync(name, cancellationToken), cancellationToken);

    /// <inheritdoc cref="NodeRegistry.AttachExportServer"/>
    public void AttachExportServer(IExportServer server) => _nodes.AttachExportServer(server);

    public void DetachExportServer(IExportServer server) => _nodes.DetachExportServer(server);

    /// <inheritdoc cref="NodeRegistry.ResolveLoopback"/>
    internal BlockNode ResolveLoopback(BlockNode node) => _nodes.ResolveLoopback(node);

    // ---- image replacement (ImageReplacementCheck) ----------------------------------------------------

    /// <summary>How often the background check compares each node's open file with its path; zero = never (only at control operations).</summary>
    public TimeSpan ImageCheckInterval
    {
        get => _replacements.Interval;
        init => _replacements.Interval = value;
    }

    /// <summary>Compares every node's open file with its path now (what the background check does).</summary>
    public Task CheckImagesAsync(CancellationToken cancellationToken = default) =>
        ControlAsync(() => _persistence.CheckImagesControlLockedAsync(Nodes, cancellationToken), cancellationToken);

    // ---- bitmaps and transactions (TransactionRunner, BitmapPersistence) -------------------------------

    /// <summary>A transaction of one bitmap action; its refusal is the action's own error.</summary>
    public Task<DirtyBitmap> BitmapActionAsync(TransactionAction action, CancellationToken cancellationToken = default) =>
        _transactions.RunOneAsync<DirtyBitmap>(action, cancellationToken);

    /// <summary>A transaction of one action of any kind; its refusal is the action's own error.</summary>
    public Task<T> RunOneActionAsync<T>(TransactionAction action, CancellationToken cancellationToken = default) =>
        _transactions.RunOneAsync<T>(action, cancellationToken);

    /// <summary>
    /// Runs actions all or nothing (QEMU's qmp_transaction): see <see cref="TransactionRunner"/>.
    /// More than <see cref="MaxTransactionActions"/> actions are refused before any runs.
    /// </summary>
    public Task<IReadOnlyList<object?>> TransactionAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken = default) =>
        _transactions.RunAsync(actions, cancellationToken);

    /// <summary>Folds the sealed journal segments into the checkpoints now (the journal also asks for it when one seals).</summary>
    public Task FoldJournalAsync(CancellationToken cancellationToken = default) =>
        ControlAsync(_persistence.FoldJournalControlLockedAsync, cancellationToken);

    /// <summary>The last failure of a background fold of the journal into the checkpoints (it is retried at the next one).</summary>
    public string? LastFoldError => _persistence.LastFoldError;

    /// <summary>Background folds that failed since the start.</summary>
    public long FailedFolds => _persistence.FailedFolds;

    /// <summary>Why the last repair of the journal failed (null after a success, or before any attempt).</summary>
    public string? LastJournalRepairError => _persistence.LastJournalRepairError;

    /// <inheritdoc cref="BitmapPersistence.RequestJournalRepair"/>
    public void RequestJournalRepair() => _persistence.RequestJournalRepair();

    /// <inheritdoc cref="BitmapPersistence.RepairJournalControlLockedAsync"/>
    public Task RepairJournalAsync(CancellationToken cancellationToken = default) =>
        ControlAsync(() => _persistence.RepairJournalControlLockedAsync(cancellationToken), cancellationToken);

    // ---- limits (BitmapLimits, TransactionRunner) --------------------------------------------------------

    /// <inheritdoc cref="BitmapLimits.DefaultMemoryBudget"/>
    public const long DefaultBitmapMemoryBudget = BitmapLimits.DefaultMemoryBudget;

    /// <inheritdoc cref="TransactionRunner.DefaultMaxActions"/>
    public const int DefaultMaxTransactionActions = TransactionRunner.DefaultMaxActions;

    /// <inheritdoc cref="BitmapLimits.DefaultMaxPersistentBitmapBytes"/>
    public const long DefaultMaxPersistentBitmapBytes = BitmapLimits.DefaultMaxPersistentBitmapBytes;

    /// <inheritdoc cref="BitmapLimits.MemoryBudget"/>
    public long BitmapMemoryBudget
    {
        get => _limits.MemoryBudget;
        init => _limits.MemoryBudget = value;
    }

    /// <inheritdoc cref="TransactionRunner.MaxActions"/>
    public int MaxTransactionActions
    {
        get => _transactions.MaxActions;
        init => _transactions.MaxActions = value;
    }

    /// <inheritdoc cref="BitmapLimits.MaxPersistentBitmapBytes"/>
    public long MaxPersistentBitmapBytes
    {
        get => _limits.MaxPersistentBitmapBytes;
        init => _limits.MaxPersistentBitmapBytes = value;
    }

    /// <summary>
    /// How long a mirror in copy mode auto lets its remaining bytes fail to shrink while writes go on
    /// before it switches itself to write-blocking; jobs started afterwards use it. Positive.
    /// </summary>
    public TimeSpan AutoCopyModeWindow
    {
        get => _autoCopyModeWindow;
        set => _autoCopyModeWindow = value > TimeSpan.Zero ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "The window must be positive");
    }

    /// <inheritdoc cref="BitmapLimits.MemoryInUse"/>
    public long BitmapMemoryInUse => _limits.MemoryInUse;

    /// <inheritdoc cref="BitmapLimits.CheckSize"/>
    public void CheckBitmapSize(long size, long granularity, bool persistent) => _limits.CheckSize(size, granularity, persistent);

    internal long LastingBytes(long memoryBytes, bool persistent) => _limits.LastingBytes(memoryBytes, persistent);

    internal void EnsureBitmapMemory(long bytes) => _limits.EnsureMemory(bytes);

    // ---- jobs (JobManager) ---------------------------------------------------------------------------------

    /// <summary>The jobs not dismissed, in creation order.</summary>
    public IReadOnlyList<Job> Jobs => _jobs.Jobs;

    /// <summary>Dismissed jobs, oldest first (GET /jobs?include=dismissed).</summary>
    public IReadOnlyList<Job> JobHistory => _jobs.History;

    /// <summary>Job records the store refused since the start.</summary>
    public long FailedJobSaves => _jobs.FailedSaves;

    /// <inheritdoc cref="JobManager.FindJob"/>
    public Job? FindJob(string id, bool includeDismissed = false) => _jobs.FindJob(id, includeDismissed);

    public Job GetJob(string id, bool includeDismissed = false) => _jobs.GetJob(id, includeDismissed);

    /// <summary>blockdev-mirror: a one-action transaction with <see cref="MirrorStartAction"/>.</summary>
    public Task<MirrorJob> StartMirrorAsync(MirrorOptions options, CancellationToken cancellationToken = default) =>
        _transactions.RunOneAsync<MirrorJob>(new MirrorStartAction(options), cancellationToken);

    public Task<Job> PauseJobAsync(string id, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.PauseControlLocked(), cancellationToken);

    public Task<Job> ResumeJobAsync(string id, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.ResumeControlLocked(), cancellationToken);

    public Task<Job> CompleteJobAsync(string id, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.CompleteControlLocked(), cancellationToken);

    public Task<Job> SetJobSpeedAsync(string id, long speed, CancellationToken cancellationToken = default) =>
        ChangeJobAsync(id, speed, null, cancellationToken);

    /// <summary>block-job-change: background → write-blocking or auto, auto (not yet switched) → write-blocking or background (<c>copy-mode-change</c> otherwise).</summary>
    public Task<Job> ChangeJobAsync(string id, MirrorCopyMode copyMode, CancellationToken cancellationToken = default) =>
        ChangeJobAsync(id, null, copyMode, cancellationToken);

    /// <summary>set-speed and block-job-change together (PATCH), all or nothing: a refusal of either changes nothing.</summary>
    public Task<Job> ChangeJobAsync(string id, long? speed, MirrorCopyMode? copyMode, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.ChangeControlLocked(speed, copyMode), cancellationToken);

    public Task<Job> DismissJobAsync(string id, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.DismissControlLocked(), cancellationToken);

    /// <summary>
    /// Cancel: outside ready always an abort; in ready a soft cancel converges without pivot unless
    /// <paramref name="force"/>. A soft cancel of a user-paused job is refused (<c>job-paused</c>).
    /// </summary>
    public Task<Job> CancelJobAsync(string id, bool force, CancellationToken cancellationToken = default) =>
        _jobs.CancelAsync(id, force, cancellationToken);

    public Task<Job> FinalizeJobAsync(string id, CancellationToken cancellationToken = default) =>
        _jobs.RunVerbAsync(id, job => job.FinalizeControlLockedAsync(), cancellationToken);

    /// <summary>Waits until every queued job save has been attempted.</summary>
    public Task FlushJobSavesAsync() => _jobs.FlushSavesAsync();

    /// <inheritdoc cref="JobManager.RecoverControlLockedAsync"/>
    public Task RecoverJobsAsync(CancellationToken cancellationToken = default) =>
        ControlAsync(() => _jobs.RecoverControlLockedAsync(cancellationToken), cancellationToken);

    /// <summary>Before <see cref="StopAsync"/>: see <see cref="JobManager.ShutdownAsync"/> (bounded by <see cref="StopWait"/>).</summary>
    public Task ShutdownJobsAsync(CancellationToken cancellationToken = default) =>
        _jobs.ShutdownAsync(StopWait, StopFailures, cancellationToken);
}
