using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core;

/// <summary>
/// The block layer's global state, as QEMU keeps it: the registries of nodes and exports (jobs
/// live in the job manager, which shares the control lock). Control-plane operations run one at
/// a time under <see cref="ControlAsync{T}"/>; the data path runs concurrently on the nodes.
/// Every change is written through to the <see cref="IBlockStore"/> before it returns.
/// </summary>
public sealed partial class BlockLayer : IAsyncDisposable
{
    private readonly SemaphoreSlim _control = new(1, 1);
    private readonly Dictionary<string, BlockNode> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, BlockExport> _exports = new(StringComparer.Ordinal);
    private readonly List<IExportServer> _exportServers = [];
    private readonly IRemoteImageOpener? _remote;
    private readonly IBitmapJournal? _journal;
    private readonly BitmapDurability? _durability;
    private int _foldQueued;
    private bool _stopped;

    public BlockLayer(ImageRoot root, IBlockStore store, IEventSink events, TimeProvider time, IRemoteImageOpener? remote = null)
    {
        Root = root;
        Store = store;
        Events = events;
        Time = time;
        _remote = remote;
    }

    public ImageRoot Root { get; }

    public IBlockStore Store { get; }

    public IEventSink Events { get; }

    public TimeProvider Time { get; }

    /// <summary>
    /// The write-ahead journal of persistent bitmaps (set before <see cref="LoadAsync"/>); null =
    /// none, and then, as in QEMU, a persistent bitmap is only exact after a clean stop.
    /// </summary>
    public IBitmapJournal? Journal
    {
        get => _journal;
        init
        {
            _journal = value;
            _durability = value is null ? null : new BitmapDurability(value);
            if (value is not null)
            {
                value.SegmentSealed += QueueFold;
                value.WriteFailed += QueueJournalRepair;
            }
        }
    }

    /// <summary>The last failure of a background fold of the journal into the checkpoints (it is retried at the next one).</summary>
    public string? LastFoldError { get; private set; }

    public DateTime UtcNow => Time.GetUtcNow().UtcDateTime;

    /// <summary>Raised (under the control lock) when a node is added, so the host can wire hooks (journal).</summary>
    public event Action<BlockNode>? NodeAdded;

    /// <summary>A snapshot of the nodes, in creation order.</summary>
    public IReadOnlyList<BlockNode> Nodes
    {
        get
        {
            lock (_nodes)
                return [.. _nodes.Values.OrderBy(n => n.CreatedAt).ThenBy(n => n.Name, StringComparer.Ordinal)];
        }
    }

    public IReadOnlyList<BlockExport> Exports
    {
        get
        {
            lock (_nodes)
                return [.. _exports.Values.OrderBy(e => e.CreatedAt)];
        }
    }

    public BlockNode? FindNode(string name)
    {
        lock (_nodes)
            return _nodes.GetValueOrDefault(name);
    }

    public BlockNode GetNode(string name) => FindNode(name) ?? throw BlockErrors.NodeNotFound(name);

    public BlockExport? FindExport(string name)
    {
        lock (_nodes)
            return _exports.GetValueOrDefault(name);
    }

    /// <summary>Runs a control-plane operation alone (QEMU's big lock).</summary>
    public async Task<T> ControlAsync<T>(Func<Task<T>> operation, CancellationToken cancellationToken = default)
    {
        await _control.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_stopped)
                throw BlockErrors.Conflict("service-stopping", "The service is stopping");
            return await operation().ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    public Task ControlAsync(Func<Task> operation, CancellationToken cancellationToken = default) =>
        ControlAsync(async () =>
        {
            await operation().ConfigureAwait(false);
            return true;
        }, cancellationToken);

    // ---- start and stop -------------------------------------------------------------------

    /// <summary>
    /// Rebuilds the state from the store: nodes reopened, persistent bitmaps restored from their last
    /// checkpoint plus the journal entries after it, or found inconsistent when that cannot be proven
    /// (see <see cref="Unprovable"/>). Every restored bitmap is checkpointed again at once, so the old
    /// journal segments can go and the new run journals from a clean base.
    /// </summary>
    public Task LoadAsync(CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        var recovery = _journal is null ? JournalRecovery.Empty : await _journal.RecoverAsync(cancellationToken).ConfigureAwait(false);
        foreach (var damage in recovery.Damage)
            LoadFailures.Add($"bitmap journal: {damage.Description}");
        var journaled = recovery.Entries
            .GroupBy(e => (e.Node, e.Bitmap))
            .ToDictionary(g => g.Key, g => (IReadOnlyList<JournalEntry>)[.. g]);
        var allRows = await Store.LoadBitmapsAsync(cancellationToken).ConfigureAwait(false);
        // Sequences go on from the highest any checkpoint covers, even if the journal's files were lost.
        var through = Math.Max(recovery.LastSequence, allRows.Max(r => r.JournalSequence) ?? 0);
        var bitmapRows = allRows
            .GroupBy(b => b.Node, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.OrderBy(b => b.CreatedAt).ToList(), StringComparer.Ordinal);
        var restored = new List<(BlockNode Node, DirtyBitmap Bitmap)>();
        var kept = new List<BitmapRecord>();
        var drop = new List<(string, string)>();
        foreach (var record in await Store.LoadNodesAsync(cancellationToken).ConfigureAwait(false))
        {
            var rows = bitmapRows.GetValueOrDefault(record.Name) ?? [];
            IBlockImage image;
            try
            {
                image = await OpenImageAsync(record.Driver, record.Path, record.Uri, null, record.ReadOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is BlockException or IOException or UnauthorizedAccessException)
            {
                // The record stays: an operator may bring the image back and restart. Its bitmaps keep
                // their journal entries, folded into their content, since the old segments go.
                LoadFailures.Add($"node '{record.Name}': {e.Message}");
                kept.AddRange(rows.Where(r => r.Persistent).Select(r => FoldForLater(r, record.Size, journaled, through)));
                continue;
            }
            var node = new BlockNode(record.Name, record.Driver, image, record.Path, record.Uri, record.ReadOnly, record.CreatedAt);
            foreach (var row in rows)
            {
                if (!row.Persistent)
                {
                    // Non-persistent bitmaps vanish with the process, as in QEMU.
                    drop.Add((row.Node, row.Name));
                    continue;
                }
                var bitmap = RestoreBitmap(node, row, journaled.GetValueOrDefault((row.Node, row.Name)) ?? [], recovery);
                node.AddBitmap(bitmap);
                restored.Add((node, bitmap));
            }
            AddNodeUnlocked(node);
        }
        if (drop.Count > 0)
            await Store.DeleteBitmapsAsync(drop, cancellationToken).ConfigureAwait(false);
        if (kept.Count > 0)
            await Store.SaveBitmapsAsync(kept, cancellationToken).ConfigureAwait(false);
        // No write runs yet, so the snapshot needs no quiesce; the checkpoints cover every recovered entry.
        await CheckpointUnlockedAsync(restored, cleanStop: false, through, cancellationToken).ConfigureAwait(false);
        if (_journal is not null)
            await _journal.StartAsync(through + 1, cancellationToken).ConfigureAwait(false);
        StartImageChecks();
    }, cancellationToken);

    /// <summary>Problems met while loading (images that could not be reopened).</summary>
    public List<string> LoadFailures { get; } = [];

    /// <summary>Why each bitmap restored inconsistent at the last load ("node/bitmap: reason").</summary>
    public List<string> InconsistentAtLoad { get; } = [];

    private DirtyBitmap RestoreBitmap(BlockNode node, BitmapRecord row, IReadOnlyList<JournalEntry> entries, JournalRecovery recovery)
    {
        var bitmap = new DirtyBitmap(row.Name, node.Size, row.Granularity, persistent: true, disabled: row.Disabled) { CreatedAt = row.CreatedAt };
        var reason = Unprovable(node, row, recovery);
        if (reason is null)
        {
            try
            {
                bitmap.Deserialize(row.Content);
                if (row.JournalSequence is { } after && !BitmapFold.Apply(bitmap, entries, after))
                    reason = "a journal entry lies outside the bitmap";
            }
            catch (ArgumentException)
            {
                reason = "the stored content does not fit the image";
            }
        }
        if (reason is not null)
        {
            // QEMU: a bitmap that cannot be trusted is kept, disabled, and can only be removed.
            bitmap.Clear();
            bitmap.MarkInconsistent(reason);
            bitmap.Disabled = true;
            InconsistentAtLoad.Add($"{node.Name}/{row.Name}: {reason}");
        }
        return bitmap;
    }

    /// <summary>
    /// Why a stored persistent bitmap cannot be proven exact for the image as it is now, or null when
    /// it can. The rule:
    /// <list type="bullet">
    /// <item>never: a bitmap already inconsistent, one without stored content, or an image whose size
    /// or (raw) inode differs from the checkpoint's (resized, or replaced by another file);</item>
    /// <item>after a clean stop (in-use clear): the image's mtime must equal the one stamped at the
    /// stop, when the service had flushed and closed it: any later change was made by someone else;</item>
    /// <item>after a crash (in-use set): the journal proves every granule the service wrote or was
    /// writing (write-ahead), so the content is checkpoint + journal, provided a journal covered the
    /// bitmap, and the image was not modified by anyone else since: its mtime must not be older than
    /// at the checkpoint (a restored older copy) nor newer than the last moment the dead service could
    /// have written it (its last sign of life + <see cref="FileBitmapJournalOptions.AliveInterval"/> +
    /// margin). A modification by someone else within that margin of the crash cannot be told from the
    /// service's own last writes; that is the limit of what mtimes prove. And the journal must be
    /// whole above the checkpoint: a damaged or missing segment (<see cref="JournalRecovery.Damage"/>)
    /// may have held entries of any bitmap whose checkpoint covers less.</item>
    /// </list>
    /// Remote (nbd) images have no stamp beyond their size: what others do to a remote export is never visible here.
    /// </summary>
    private string? Unprovable(BlockNode node, BitmapRecord row, JournalRecovery recovery)
    {
        if (row.Inconsistent)
            return row.InconsistentReason ?? "it was inconsistent already";
        if (row.Content is null)
            return "no content was stored";
        if (row.ImageSize is { } size && size != node.Size)
            return "the image changed size";
        ImageStamp? stamp = null;
        if (node.Path is not null)
        {
            // The file just opened (fstat), which is what the node will read and write.
            stamp = ImageStamp.Of(node.Image);
            if (stamp is null)
                return "the image cannot be examined";
            if (row.ImageInode is { } inode && inode != stamp.Value.Inode)
                return "the image was replaced by another file";
        }
        if (!row.InUse)
        {
            if (stamp is { } s && row.ImageMtimeUtc is { } stopped && s.ModifiedUtc != Utc(stopped))
                return "the image was modified while the service was stopped";
            return null;
        }
        if (row.JournalSequence is null || _journal is null)
            return "the service stopped uncleanly and no journal covered the bitmap";
        if (recovery.DamageAfter(row.JournalSequence.Value) is { } damage)
            return $"the bitmap journal is damaged: {damage.Description}";
        if (stamp is not { } now)
            return null;
        if (row.ImageMtimeUtc is { } checkpointed && now.ModifiedUtc < Utc(checkpointed))
            return "the image is older than at the last checkpoint";
        if (recovery.WroteUntilUtc is not { } until)
            return "the bitmap journal's files are missing (the last run left no sign of life)";
        if (now.ModifiedUtc > until)
            return "the image was modified after the service stopped";
        return null;
    }

    private static DateTime Utc(DateTime value) => DateTime.SpecifyKind(value, DateTimeKind.Utc);

    /// <summary>
    /// A row of a node that could not be reopened, with the journal folded into its content (the old
    /// segments are about to go). After a crash it becomes inconsistent: the journal's sign of life
    /// bounds writes to images of this run only, and a later run cannot prove what happened meanwhile.
    /// </summary>
    private static BitmapRecord FoldForLater(BitmapRecord row, long nodeSize, Dictionary<(string, string), IReadOnlyList<JournalEntry>> journaled, long through)
    {
        const string NotReopened = "the image could not be reopened at a restart after an unclean stop";
        if (row.Inconsistent || row.JournalSequence is null)
            return row.Inconsistent || !row.InUse ? row : row with { Inconsistent = true, InconsistentReason = NotReopened };
        var entries = journaled.GetValueOrDefault((row.Node, row.Name)) ?? [];
        var folded = BitmapFold.Fold(row, nodeSize, entries);
        return row with
        {
            Content = folded ?? row.Content,
            Inconsistent = row.InUse || folded is null,
            InconsistentReason = folded is null ? "a journal entry lies outside the bitmap" : row.InUse ? NotReopened : null,
            JournalSequence = Math.Max(through, row.JournalSequence.Value),
        };
    }

    /// <summary>
    /// Clean stop: node by node, with its writes quiesced, flush and close its image, then checkpoint
    /// its persistent bitmaps with the in-use flag cleared and the image's stamp. After this no
    /// control operation runs. A node that cannot be stopped (writes that do not drain within
    /// <see cref="StopWait"/>, a bitmap that cannot be serialized or stored, a path that no longer
    /// resolves) is skipped and listed in <see cref="StopFailures"/>: its bitmaps keep their last
    /// checkpoint with in-use set, so the next start restores them from the journal (exact) or finds
    /// them inconsistent, and every other node still gets its clean stop.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _imageChecksStop.CancelAsync().ConfigureAwait(false);
        if (!await EnterForStopAsync(cancellationToken).ConfigureAwait(false))
            return;
        try
        {
            if (_stopped)
                return;
            _stopped = true;
            foreach (var node in Nodes)
                await StopNodeAsync(node, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>
    /// How long a stop waits for one thing (the control lock, the jobs to conclude, one node's
    /// writes in flight) before it goes on without it: a stop must end, and in time for a service
    /// manager's grace period (docker stop: 10 s).
    /// </summary>
    public TimeSpan StopWait { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>What the last stop could not do cleanly ("node 'a': reason", "job 'm': reason"), for the host's log.</summary>
    public List<string> StopFailures { get; } = [];

    private async Task<bool> EnterForStopAsync(CancellationToken cancellationToken)
    {
        if (await _control.WaitAsync(StopWait, cancellationToken).ConfigureAwait(false))
            return true;
        StopFailures.Add($"a control operation did not finish within {StopWait.TotalSeconds:0.#} s: no node was stopped cleanly " +
            "(persistent bitmaps keep their last checkpoint and the journal)");
        return false;
    }

    private async Task StopNodeAsync(BlockNode node, CancellationToken cancellationToken)
    {
        IDisposable quiesce;
        using (var bounded = new CancellationTokenSource(StopWait, Time))
        using (var linked = CancellationTokenSource.CreateLinkedTokenSource(bounded.Token, cancellationToken))
        {
            try
            {
                quiesce = await node.Gate.QuiesceAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (bounded.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                // Left open and quiesced: later writes wait; the process ends without them.
                StopFailures.Add($"node '{node.Name}': writes in flight did not finish within {StopWait.TotalSeconds:0.#} s; " +
                    "its persistent bitmaps keep their last checkpoint and the journal");
                return;
            }
        }
        List<BitmapRecord> records;
        List<(DirtyBitmap, byte[])> contents = [];
        // Released once the image is closed and the checkpoint taken: a write arriving later fails on
        // the closed image, it does not hang, and the checkpoint covers every write that got through.
        using (quiesce)
        {
            try
            {
                if (!node.Image.ReadOnly)
                    await node.Image.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException)
            {
                // A failed flush cannot prove the bitmaps (QEMU leaves them in use): inconsistent at next start.
                records = [.. node.Bitmaps.Where(b => b.Persistent).Select(b => ToRecord(node, b, inUse: true, content: null) with
                {
                    Inconsistent = true,
                    InconsistentReason = b.InconsistentReason ?? "the image could not be flushed at the clean stop",
                })];
                await StoreForStopAsync(node, records, contents, cancellationToken).ConfigureAwait(false);
                return;
            }
            try
            {
                await node.Image.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // Flushed already: what was written is on the disk.
            }
            var bitmaps = node.Bitmaps.Where(b => b.Persistent).Select(b => (node, b)).ToList();
            if (bitmaps.Count == 0)
                return;
            try
            {
                (records, contents) = BuildCheckpoint(bitmaps, cleanStop: true, _journal?.LastSequence);
            }
            catch (Exception e)
            {
                // Serialization (a bitmap too large for one array) or the image's stamp (a path that no
                // longer resolves inside the root): this node only.
                StopFailures.Add($"node '{node.Name}': its persistent bitmaps could not be checkpointed ({e.Message}); " +
                    "they keep their last checkpoint and the journal");
                return;
            }
        }
        await StoreForStopAsync(node, records, contents, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Stores one node's records of a stop; a failure is listed, and the stop goes on with the next node.</summary>
    private async Task StoreForStopAsync(BlockNode node, List<BitmapRecord> records, List<(DirtyBitmap, byte[])> contents, CancellationToken cancellationToken)
    {
        if (records.Count == 0)
            return;
        try
        {
            await Store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
            Checkpointed(contents);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            StopFailures.Add($"node '{node.Name}': its persistent bitmaps could not be stored ({e.Message}); " +
                "they keep their last checkpoint and the journal");
        }
    }

    /// <summary>
    /// Stops cleanly if <see cref="StopAsync"/> did not run yet (a host may dispose its services
    /// before it stops them). The control lock is not disposed: a late caller gets a clean
    /// "stopping" refusal instead of an ObjectDisposedException.
    /// </summary>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    // ---- nodes ----------------------------------------------------------------------------

    public Task<BlockNode> CreateNodeAsync(NodeSpec spec, CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        Names.Validate("node", spec.Name);
        if (FindNode(spec.Name) is not null)
            throw BlockErrors.NodeExists(spec.Name);
        var image = await OpenImageAsync(spec.Driver, spec.Path, spec.Uri, spec.CreateSize, spec.ReadOnly, cancellationToken).ConfigureAwait(false);
        var path = spec.Driver == "raw" ? Root.ToRelative(Root.Resolve(spec.Path)) : null;
        var node = new BlockNode(spec.Name, spec.Driver, image, path, spec.Driver == "nbd" ? spec.Uri : null, spec.ReadOnly, UtcNow);
        try
        {
            await Store.SaveNodeAsync(ToRecord(node), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // Refused: nothing may remain, not even the image this call created (a retry would find it and get image-exists).
            await image.DisposeAsync().ConfigureAwait(false);
            if (spec.CreateSize is not null && path is not null)
                TryDelete(Root.Resolve(path));
            throw;
        }
        AddNodeUnlocked(node);
        return node;
    }, cancellationToken);

    private void AddNodeUnlocked(BlockNode node)
    {
        if (_durability is { } durability)
            node.PersistentBitmapMarked = durability.EnsureAsync;
        lock (_nodes)
            _nodes.Add(node.Name, node);
        NodeAdded?.Invoke(node);
    }

    private async Task<IBlockImage> OpenImageAsync(string driver, string? path, string? uri, long? createSize, bool readOnly, CancellationToken cancellationToken)
    {
        switch (driver)
        {
            case "raw":
                return OpenRaw(path, createSize, readOnly);
            case "nbd":
                if (path is not null)
                    throw BlockErrors.Invalid("invalid-request", "The nbd driver takes a 'uri', not a 'path'");
                if (createSize is not null)
                    throw BlockErrors.Invalid("invalid-request", "The nbd driver cannot create images");
                if (string.IsNullOrWhiteSpace(uri))
                    throw BlockErrors.Invalid("invalid-request", "The nbd driver needs a 'uri'");
                if (_remote is null)
                    throw BlockErrors.Invalid("invalid-request", "The nbd driver is not available");
                return await _remote.OpenAsync(uri, readOnly, cancellationToken).ConfigureAwait(false);
            default:
                throw BlockErrors.Invalid("invalid-request", $"Unknown driver '{driver}' (expected 'raw' or 'nbd')");
        }
    }

    private RawFileImage OpenRaw(string? path, long? createSize, bool readOnly)
    {
        if (path is null)
            throw BlockErrors.Invalid("invalid-request", "The raw driver needs a 'path'");
        var full = Root.Resolve(path);
        if (Directory.Exists(full))
            throw BlockErrors.Invalid("path-outside-root", $"Path '{path}' is a directory");
        try
        {
            if (createSize is { } size)
            {
                if (size < 0 || size % 512 != 0)
                    throw BlockErrors.Invalid("invalid-size", $"Image size {size} must be a non-negative multiple of 512");
                if (File.Exists(full) || new FileInfo(full).LinkTarget is not null)
                    throw ImageExists(path);
                CreateParentDirectory(full, path);
                return RawFileImage.Create(full, size, path);
            }
            if (!File.Exists(full))
                throw ImageNotFound(path);
            return RawFileImage.Open(full, readOnly, path, Root.AllowHardLinks);
        }
        catch (FileNotFoundException)
        {
            throw ImageNotFound(path);
        }
        catch (UnauthorizedAccessException e)
        {
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{path}': {e.Message}");
        }
        catch (IOException e) when (OpenErrorOf(e) is { } errno)
        {
            // By errno, never by message text: the file system said what is wrong with the path.
            throw errno switch
            {
                LibC.EEXIST => ImageExists(path),
                LibC.ENOENT => ImageNotFound(path),
                _ => BlockErrors.Invalid("invalid-path", $"Could not open '{path}': {e.Message}"),
            };
        }
    }

    /// <summary>
    /// The errno of a failed open or mkdir that says something about the path (HResult carries it,
    /// see <see cref="LibC.ErrnoException"/>; .NET's own PathTooLongException is ENAMETOOLONG), or null.
    /// </summary>
    private static int? OpenErrorOf(IOException e) => e switch
    {
        PathTooLongException => LibC.ENAMETOOLONG,
        _ when e.HResult is LibC.EEXIST or LibC.ENOENT or LibC.ENOTDIR or LibC.ENAMETOOLONG or LibC.ELOOP or LibC.EISDIR => e.HResult,
        _ => null,
    };

    private static void CreateParentDirectory(string full, string path)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        }
        catch (IOException e) when (e is DirectoryNotFoundException || e.HResult is LibC.EEXIST or LibC.ENOTDIR)
        {
            // mkdir met a file where a directory should be.
            throw BlockErrors.Invalid("invalid-path", $"Could not create '{path}': a component of the path is not a directory");
        }
    }

    private static BlockException ImageExists(string path) =>
        BlockErrors.Conflict("image-exists", $"Image '{path}' already exists");

    private static BlockException ImageNotFound(string path) =>
        BlockErrors.NotFound("image-not-found", $"Could not open '{path}': No such file or directory");

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    public Task DeleteNodeAsync(string name, bool deleteImage, CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        var node = GetNode(name);
        if (node.JobId is { } job)
            throw BlockErrors.NodeBusy(name, $"block device is in use by block job: mirror ({job})");
        if (node.Exports.Count > 0)
            throw BlockErrors.NodeBusy(name, $"block device is in use by NBD export '{node.Exports.First()}'");
        // Everything that can refuse comes first, so a refusal changes nothing: the file to delete
        // must still be the node's own and its path must still resolve inside the root.
        string? imageFile = null;
        if (deleteImage && node.Driver == "raw" && node.Path is { } path)
        {
            ThrowIfImageReplacedUnlocked(node);
            imageFile = Root.Resolve(path);
        }
        // Stored first: a refusal by the store leaves the node as it was, in memory and on disk.
        await Store.DeleteNodeAsync(name, cancellationToken).ConfigureAwait(false);
        using (await node.Gate.QuiesceAsync(cancellationToken).ConfigureAwait(false))
        {
            lock (_nodes)
                _nodes.Remove(name);
        }
        await node.Image.DisposeAsync().ConfigureAwait(false);
        if (imageFile is not null)
            TryDelete(imageFile);
    }, cancellationToken);

    /// <summary>Removes a node from the registry without touching its image (the mirror pivot consumes the target).</summary>
    internal void ForgetNodeUnlocked(string name)
    {
        lock (_nodes)
            _nodes.Remove(name);
    }

    // ---- exports (the NBD server reads this registry) -------------------------------------

    /// <summary>A server of this layer's exports starts: its clients in this process become recognisable.</summary>
    public void AttachExportServer(IExportServer server)
    {
        lock (_exportServers)
            _exportServers.Add(server);
    }

    public void DetachExportServer(IExportServer server)
    {
        lock (_exportServers)
            _exportServers.Remove(server);
    }

    /// <summary>
    /// The node whose data <paramref name="node"/> really is: a node whose image is a connection to
    /// one of this service's own exports reads and writes the exported node (followed through any
    /// number of such hops; a cycle stops where it closes). QEMU's bdrv_skip_filters for this graph.
    /// </summary>
    internal BlockNode ResolveLoopback(BlockNode node)
    {
        IExportServer[] servers;
        lock (_exportServers)
            servers = [.. _exportServers];
        var seen = new HashSet<BlockNode>();
        while (seen.Add(node))
        {
            var export = servers.Select(s => s.ExportServing(node.Image)).FirstOrDefault(e => e is not null);
            if (export is null || FindExport(export) is not { } e || FindNode(e.Node) is not { } next)
                break;
            node = next;
        }
        return node;
    }

    public Task<BlockExport> AddExportAsync(string name, string nodeName, bool writable, IReadOnlyList<string> bitmaps, CancellationToken cancellationToken = default) => ControlAsync(() =>
    {
        Names.Validate("export", name);
        if (FindExport(name) is not null)
            throw BlockErrors.Conflict("export-exists", $"Block export id '{name}' is already in use");
        var node = GetNode(nodeName);
        if (writable && node.ReadOnly)
            throw BlockErrors.NodeReadOnly(nodeName);
        ThrowIfImageReplacedUnlocked(node);
        // nbd_export_create: each listed bitmap in order, all checks of one before the next, so the
        // refusal names the bitmap QEMU would name.
        var resolved = new List<DirtyBitmap>();
        foreach (var b in bitmaps.Distinct(StringComparer.Ordinal))
        {
            var bitmap = node.FindBitmap(b) ?? throw BlockErrors.NotFound("bitmap-not-found", $"Bitmap '{b}' is not found");
            // A read-only export promises a view that does not change; a bitmap recording writes to
            // a writable node would change under its clients.
            if (!writable && !node.ReadOnly && !bitmap.Disabled)
                throw BlockErrors.Conflict("bitmap-enabled", $"Enabled bitmap '{b}' incompatible with readonly export");
            bitmap.Check(BitmapCheck.AllowReadOnly);
            resolved.Add(bitmap);
        }
        foreach (var bitmap in resolved)
            bitmap.Busy = true;
        var export = new BlockExport(name, nodeName, writable, [.. resolved.Select(b => b.Name)], UtcNow);
        lock (_nodes)
            _exports.Add(name, export);
        node.AddExport(name);
        return Task.FromResult(export);
    }, cancellationToken);

    public Task<BlockExport> RemoveExportAsync(string name, CancellationToken cancellationToken = default) => ControlAsync(() =>
    {
        var export = FindExport(name) ?? throw BlockErrors.NotFound("export-not-found", $"Export '{name}' is not found");
        lock (_nodes)
            _exports.Remove(name);
        if (FindNode(export.Node) is { } node)
        {
            node.RemoveExport(name);
            foreach (var b in export.Bitmaps)
            {
                if (node.FindBitmap(b) is { } bitmap)
                    bitmap.Busy = false;
            }
        }
        return Task.FromResult(export);
    }, cancellationToken);

    // ---- bitmaps and transactions ---------------------------------------------------------

    public async Task<DirtyBitmap> BitmapActionAsync(TransactionAction action, CancellationToken cancellationToken = default)
    {
        try
        {
            var results = await TransactionAsync([action], cancellationToken).ConfigureAwait(false);
            return (DirtyBitmap)results[0]!;
        }
        catch (TransactionFailedException e)
        {
            throw e.Error;
        }
    }

    /// <summary>
    /// Runs actions all or nothing (QEMU's qmp_transaction): under the control lock, with data
    /// writes on every node quiesced, each action prepares in order; the first refusal aborts the
    /// prepared ones in reverse order and is rethrown with its index. More than
    /// <see cref="MaxTransactionActions"/> actions are refused before any runs.
    /// </summary>
    public Task<IReadOnlyList<object?>> TransactionAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken = default)
    {
        if (actions.Count > MaxTransactionActions)
            return Task.FromException<IReadOnlyList<object?>>(BlockErrors.TooManyActions(actions.Count, MaxTransactionActions));
        return ControlAsync(async () =>
        {
            // Before anything is prepared: an action refused for a replaced image must change nothing.
            await CheckImagesUnlockedAsync(Nodes, cancellationToken).ConfigureAwait(false);
            return await RunTransactionUnlockedAsync(actions, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    /// <summary>
    /// As <see cref="TransactionAsync"/>, for callers already holding the control lock. Every action
    /// prepares, then the whole outcome is stored in one store transaction, and only then do the
    /// actions commit: any failure before that point (a refusal, any other exception of an action,
    /// the store's) aborts every prepared action, so a refused transaction changes nothing, in memory
    /// or on disk. A refusal is rethrown as <see cref="TransactionFailedException"/> with its index;
    /// anything else as it is (the host maps a store's failure to 503 storage-unavailable).
    /// </summary>
    public async Task<IReadOnlyList<object?>> RunTransactionUnlockedAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken)
    {
        var context = new TransactionContext(this);
        var prepared = new List<TransactionAction>(actions.Count);
        var quiesced = new List<IDisposable>();
        try
        {
            // Mirror targets last: a write-blocking write holds its device's gate while its copy waits
            // for the target's, so a target quiesced first would deadlock against the device's drain.
            foreach (var node in Nodes.OrderBy(n => n.Filter is TargetGuardFilter))
                quiesced.Add(await node.Gate.QuiesceAsync(cancellationToken).ConfigureAwait(false));
            for (var i = 0; i < actions.Count; i++)
            {
                try
                {
                    await actions[i].PrepareAsync(context).ConfigureAwait(false);
                    prepared.Add(actions[i]);
                }
                catch (BlockException e)
                {
                    AbortPrepared(prepared, context);
                    throw new TransactionFailedException(i, e);
                }
                catch
                {
                    AbortPrepared(prepared, context);
                    throw;
                }
            }
            // Still quiesced: a checkpoint must see every mark of the writes its journal sequence
            // covers, and no write may rely on the old durable state of a bitmap cleared here before
            // the new one is stored (it would skip the journal and be lost with a crash).
            try
            {
                await PersistAsync(context, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                AbortPrepared(prepared, context);
                throw;
            }
            foreach (var action in prepared)
                action.Commit(context);
        }
        finally
        {
            foreach (var q in quiesced)
                q.Dispose();
        }
        foreach (var action in prepared)
            action.AfterCommit(context);
        return [.. actions.Select(a => a.Result)];
    }

    private static void AbortPrepared(List<TransactionAction> prepared, TransactionContext context)
    {
        for (var j = prepared.Count - 1; j >= 0; j--)
            prepared[j].Abort(context);
    }

    /// <summary>
    /// Stores a prepared transaction's outcome in one store transaction (before commit: the removed
    /// bitmaps are still on their nodes, busy): the removed rows deleted, every other touched bitmap
    /// checkpointed. All of it or nothing reaches the disk.
    /// </summary>
    private async Task PersistAsync(TransactionContext context, CancellationToken cancellationToken)
    {
        var removed = context.Removed.ToHashSet();
        var touched = context.Touched
            .Where(t => !removed.Contains((t.Node.Name, t.Bitmap.Name)) && t.Node.FindBitmap(t.Bitmap.Name) == t.Bitmap)
            .ToList();
        if (touched.Count == 0 && removed.Count == 0)
            return;
        var (records, contents) = BuildCheckpoint(touched, cleanStop: false, _journal?.LastSequence);
        await Store.SaveBitmapChangesAsync(records, context.Removed, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>
    /// Persists a bitmap a job changed (flags, and the content it leaves): with the node's writes
    /// quiesced, checkpoints every persistent bitmap of the node (after a pivot their image changed).
    /// </summary>
    public async Task SaveBitmapAsync(BlockNode node, DirtyBitmap bitmap, CancellationToken cancellationToken = default)
    {
        using (await node.Gate.QuiesceAsync(cancellationToken).ConfigureAwait(false))
        {
            var bitmaps = node.Bitmaps.Where(b => b.Persistent).Select(b => (node, b)).ToList();
            if (!bitmap.Persistent || !bitmaps.Any(b => ReferenceEquals(b.b, bitmap)))
                bitmaps.Add((node, bitmap));
            await CheckpointUnlockedAsync(bitmaps, cleanStop: false, _journal?.LastSequence, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Stores bitmaps: flags only for non-persistent ones; for persistent ones a checkpoint (full
    /// content, the journal sequence it covers, the image's stamp) in one transaction. Callers hold the
    /// control lock and have the nodes' writes quiesced (or there are none), and read
    /// <paramref name="through"/> under that quiesce: every entry up to it belongs to a write whose
    /// marks are in the snapshot. A persistent bitmap a running job works from is stored as what is
    /// already durable of it, not as it is in memory: the job clears bits before their copies are done,
    /// and only its exit may make that durable.
    /// </summary>
    private async Task CheckpointUnlockedAsync(IReadOnlyCollection<(BlockNode Node, DirtyBitmap Bitmap)> bitmaps, bool cleanStop, long? through, CancellationToken cancellationToken)
    {
        if (bitmaps.Count == 0)
            return;
        var (records, contents) = BuildCheckpoint(bitmaps, cleanStop, through);
        await Store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>
    /// A mirror's pivot, stored whole (the control lock held, the device's writes still quiesced by
    /// the job): the device's record on its new image, its persistent bitmaps checkpointed with that
    /// image's stamp, the consumed target gone. Stored in two steps, a crash in between would restart
    /// the device on the new image with checkpoints stamped for the old one: inconsistent bitmaps.
    /// </summary>
    internal async Task SavePivotUnlockedAsync(BlockNode device, string consumedNode, CancellationToken cancellationToken = default)
    {
        var bitmaps = device.Bitmaps.Where(b => b.Persistent).Select(b => (device, b)).ToList();
        var (records, contents) = BuildCheckpoint(bitmaps, cleanStop: false, _journal?.LastSequence);
        await Store.SavePivotAsync(ToRecord(device), records, consumedNode, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>The records of a checkpoint (see <see cref="CheckpointUnlockedAsync"/>), and the contents that become the durable base once stored.</summary>
    private (List<BitmapRecord> Records, List<(DirtyBitmap, byte[])> Contents) BuildCheckpoint(
        IReadOnlyCollection<(BlockNode Node, DirtyBitmap Bitmap)> bitmaps, bool cleanStop, long? through)
    {
        var records = new List<BitmapRecord>(bitmaps.Count);
        var contents = new List<(DirtyBitmap, byte[])>();
        var stamps = new Dictionary<BlockNode, ImageStamp?>();
        foreach (var node in bitmaps.Select(b => b.Node).Distinct())
            DetectReplacementUnlocked(node);
        foreach (var (node, bitmap) in bitmaps)
        {
            var jobHeld = node.JobId is { } id && FindJob(id) is MirrorJob job && ReferenceEquals(job.WorkingBitmap, bitmap);
            var content = !bitmap.Persistent ? null : jobHeld ? _durability?.DurableContent(bitmap) : bitmap.Serialize();
            // A job's working bitmap is disabled only so that the job, not the node, marks it; it was
            // enabled (a mirror takes no other), and a crash must not leave it disabled for good.
            // Without content this is no checkpoint, so it cannot count as a clean stop's either.
            var record = ToRecord(node, bitmap, inUse: !cleanStop || bitmap.Inconsistent || content is null, content) with { Disabled = bitmap.Disabled && !jobHeld };
            if (content is null)
            {
                records.Add(record);
                continue;
            }
            if (!stamps.TryGetValue(node, out var stamp))
            {
                // The open file's stamp (fstat), never the path's: a file renamed over the path is not
                // the one these bitmaps describe, and the path may not even resolve any more.
                stamps[node] = stamp = node.Path is null ? null : ImageStamp.Of(node.Image);
            }
            records.Add(record with
            {
                JournalSequence = _journal is null ? null : through,
                ImageSize = node.Size,
                ImageMtimeUtc = stamp?.ModifiedUtc,
                ImageInode = stamp?.Inode,
            });
            if (!bitmap.Inconsistent && !jobHeld)
                contents.Add((bitmap, content));
        }
        return (records, contents);
    }

    /// <summary>Stored: from now on the journal needs only what these contents lack.</summary>
    private void Checkpointed(List<(DirtyBitmap, byte[])> contents)
    {
        foreach (var (bitmap, content) in contents)
            _durability?.Checkpointed(bitmap, content);
    }

    // ---- journal folding -----------------------------------------------------------------------

    /// <summary>Folds the sealed journal segments into the checkpoints now (the journal also asks for it when one seals).</summary>
    public Task FoldJournalAsync(CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        if (_journal is not null)
            await FoldUnlockedAsync(_journal).ConfigureAwait(false);
    }, cancellationToken);

    private void QueueFold()
    {
        if (Interlocked.Exchange(ref _foldQueued, 1) == 0)
            _ = Task.Run(FoldAsync);
    }

    /// <summary>
    /// Folds the sealed journal segments into the stored checkpoints and drops them. It works from
    /// the durable state only (stored content + entries), never from the bitmaps in memory, so it
    /// changes nothing a crash recovery would find and needs no quiesce; it takes the control lock
    /// so no checkpoint of the same rows runs meanwhile.
    /// </summary>
    private async Task FoldAsync()
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            Interlocked.Exchange(ref _foldQueued, 0);
            if (_stopped || _journal is null)
                return;
            await FoldUnlockedAsync(_journal).ConfigureAwait(false);
            LastFoldError = null;
        }
        catch (Exception e)
        {
            // The segments stay and are folded by the next attempt (or replayed by the next start).
            LastFoldError = e.Message;
        }
        finally
        {
            _control.Release();
        }
    }

    private async Task FoldUnlockedAsync(IBitmapJournal journal)
    {
        if (await journal.ReadSealedAsync().ConfigureAwait(false) is not { } sealedPart)
            return;
        var sizes = (await Store.LoadNodesAsync().ConfigureAwait(false)).ToDictionary(n => n.Name, n => n.Size, StringComparer.Ordinal);
        var byBitmap = sealedPart.Entries.GroupBy(e => (e.Node, e.Bitmap)).ToDictionary(g => g.Key, g => g.ToList());
        var updates = new List<BitmapRecord>();
        foreach (var row in await Store.LoadBitmapsAsync().ConfigureAwait(false))
        {
            if (!row.Persistent || row.Inconsistent || row.JournalSequence is not { } covered || covered >= sealedPart.Through)
                continue;
            if (!byBitmap.TryGetValue((row.Node, row.Name), out var entries) || !entries.Any(e => e.Sequence > covered))
                continue;
            if (!sizes.TryGetValue(row.Node, out var size))
                continue;
            var folded = BitmapFold.Fold(row, size, entries);
            updates.Add(folded is null
                ? row with { Inconsistent = true, InconsistentReason = "a journal entry lies outside the bitmap", JournalSequence = sealedPart.Through }
                : row with { Content = folded, JournalSequence = sealedPart.Through });
        }
        if (updates.Count > 0)
            await Store.SaveBitmapsAsync(updates).ConfigureAwait(false);
        await journal.ReleaseSealedAsync(sealedPart.Through).ConfigureAwait(false);
    }

    // ---- records ---------------------------------------------------------------------------

    public static NodeRecord ToRecord(BlockNode node) =>
        new(node.Name, node.Driver, node.Path, node.Uri, node.Size, node.ReadOnly, node.CreatedAt);

    private static BitmapRecord ToRecord(BlockNode node, DirtyBitmap bitmap, bool inUse, byte[]? content) =>
        new(node.Name, bitmap.Name, bitmap.Granularity, bitmap.Persistent, bitmap.Disabled,
            bitmap.Inconsistent, inUse, content, null, null, bitmap.CreatedAt) { InconsistentReason = bitmap.InconsistentReason };
}
