using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
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
    private readonly IRemoteImageOpener? _remote;
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

    /// <summary>Rebuilds the state from the store: nodes reopened, persistent bitmaps loaded or found inconsistent.</summary>
    public Task LoadAsync(CancellationToken cancellationToken = default) => ControlAsync(async () =>
    {
        var bitmapRows = (await Store.LoadBitmapsAsync(cancellationToken).ConfigureAwait(false))
            .GroupBy(b => b.Node, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.OrderBy(b => b.CreatedAt).ToList(), StringComparer.Ordinal);
        var save = new List<BitmapRecord>();
        var drop = new List<(string, string)>();
        foreach (var record in await Store.LoadNodesAsync(cancellationToken).ConfigureAwait(false))
        {
            IBlockImage image;
            try
            {
                image = await OpenImageAsync(record.Driver, record.Path, record.Uri, null, record.ReadOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is BlockException or IOException or UnauthorizedAccessException)
            {
                // The record stays: an operator may bring the image back and restart.
                LoadFailures.Add($"node '{record.Name}': {e.Message}");
                continue;
            }
            var node = new BlockNode(record.Name, record.Driver, image, record.Path, record.Uri, record.ReadOnly, record.CreatedAt);
            foreach (var row in bitmapRows.GetValueOrDefault(record.Name) ?? [])
            {
                if (!row.Persistent)
                {
                    // Non-persistent bitmaps vanish with the process, as in QEMU.
                    drop.Add((row.Node, row.Name));
                    continue;
                }
                var bitmap = RestoreBitmap(node, row);
                node.AddBitmap(bitmap);
                save.Add(ToRecord(node, bitmap, inUse: true, content: null));
            }
            AddNodeUnlocked(node);
        }
        if (drop.Count > 0)
            await Store.DeleteBitmapsAsync(drop, cancellationToken).ConfigureAwait(false);
        if (save.Count > 0)
            await Store.SaveBitmapsAsync(save, cancellationToken).ConfigureAwait(false);
    }, cancellationToken);

    /// <summary>Problems met while loading (images that could not be reopened).</summary>
    public List<string> LoadFailures { get; } = [];

    private DirtyBitmap RestoreBitmap(BlockNode node, BitmapRecord row)
    {
        var bitmap = new DirtyBitmap(row.Name, node.Size, row.Granularity, persistent: true, disabled: row.Disabled) { CreatedAt = row.CreatedAt };
        if (row.Content is { } content)
            bitmap.Deserialize(content);
        var provable = !row.Inconsistent && !row.InUse && row.Content is not null && ImageUnchanged(node, row);
        if (!provable)
        {
            // QEMU: a bitmap found in-use was not stored at a clean close; it cannot be trusted.
            bitmap.Inconsistent = true;
            bitmap.Disabled = true;
        }
        return bitmap;
    }

    private bool ImageUnchanged(BlockNode node, BitmapRecord row)
    {
        if (row.ImageSize is { } size && size != node.Size)
            return false;
        if (row.ImageMtimeUtc is { } mtime && node.Path is { } path)
        {
            var now = File.GetLastWriteTimeUtc(Root.Resolve(path));
            if (now != DateTime.SpecifyKind(mtime, DateTimeKind.Utc))
                return false;
        }
        return true;
    }

    /// <summary>
    /// Clean stop: flush images, store persistent bitmap content with the in-use flag cleared and
    /// the image's size/mtime, close images. After this no control operation runs.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        await _control.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_stopped)
                return;
            _stopped = true;
            var save = new List<BitmapRecord>();
            foreach (var node in Nodes)
            {
                try
                {
                    if (!node.Image.ReadOnly)
                        await node.Image.FlushAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (IOException)
                {
                    // A failed flush cannot prove the bitmaps: leave them in use (inconsistent at next start).
                    continue;
                }
                await node.Image.DisposeAsync().ConfigureAwait(false);
                foreach (var bitmap in node.Bitmaps.Where(b => b.Persistent))
                    save.Add(ToRecord(node, bitmap, inUse: bitmap.Inconsistent, content: bitmap.Serialize(), withImageStamp: true));
            }
            if (save.Count > 0)
                await Store.SaveBitmapsAsync(save, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
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
            await image.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        AddNodeUnlocked(node);
        return node;
    }, cancellationToken);

    private void AddNodeUnlocked(BlockNode node)
    {
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
        if (createSize is { } size)
        {
            if (size < 0 || size % 512 != 0)
                throw BlockErrors.Invalid("invalid-size", $"Image size {size} must be a non-negative multiple of 512");
            if (File.Exists(full) || new FileInfo(full).LinkTarget is not null)
                throw BlockErrors.Conflict("image-exists", $"Image '{path}' already exists");
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            try
            {
                return RawFileImage.Create(full, size);
            }
            catch (IOException e) when (File.Exists(full) && e.HResult != 0 && !IsTooLarge(e))
            {
                throw BlockErrors.Conflict("image-exists", $"Image '{path}' already exists");
            }
            catch (IOException e)
            {
                TryDelete(full);
                throw BlockErrors.Invalid("invalid-size", $"Could not create an image of {size} bytes: {e.Message}");
            }
        }
        if (!File.Exists(full))
            throw BlockErrors.NotFound("image-not-found", $"Could not open '{path}': No such file or directory");
        try
        {
            return RawFileImage.Open(full, readOnly);
        }
        catch (UnauthorizedAccessException e)
        {
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{path}': {e.Message}");
        }
    }

    private static bool IsTooLarge(IOException e) => e.Message.Contains("too large", StringComparison.OrdinalIgnoreCase);

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
        using (await node.Gate.QuiesceAsync(cancellationToken).ConfigureAwait(false))
        {
            lock (_nodes)
                _nodes.Remove(name);
        }
        await node.Image.DisposeAsync().ConfigureAwait(false);
        await Store.DeleteNodeAsync(name, cancellationToken).ConfigureAwait(false);
        if (deleteImage && node.Driver == "raw" && node.Path is { } path)
            TryDelete(Root.Resolve(path));
    }, cancellationToken);

    /// <summary>Removes a node from the registry without touching its image (the mirror pivot consumes the target).</summary>
    internal void ForgetNodeUnlocked(string name)
    {
        lock (_nodes)
            _nodes.Remove(name);
    }

    // ---- exports (the NBD server reads this registry) -------------------------------------

    public Task<BlockExport> AddExportAsync(string name, string nodeName, bool writable, IReadOnlyList<string> bitmaps, CancellationToken cancellationToken = default) => ControlAsync(() =>
    {
        Names.Validate("export", name);
        if (FindExport(name) is not null)
            throw BlockErrors.Conflict("export-exists", $"Block export id '{name}' is already in use");
        var node = GetNode(nodeName);
        if (writable && node.ReadOnly)
            throw BlockErrors.NodeReadOnly(nodeName);
        var resolved = new List<DirtyBitmap>();
        foreach (var b in bitmaps.Distinct(StringComparer.Ordinal))
        {
            var bitmap = node.FindBitmap(b) ?? throw BlockErrors.NotFound("bitmap-not-found", $"Bitmap '{b}' is not found");
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
    /// prepared ones in reverse order and is rethrown with its index.
    /// </summary>
    public Task<IReadOnlyList<object?>> TransactionAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken = default) =>
        ControlAsync(() => RunTransactionUnlockedAsync(actions, cancellationToken), cancellationToken);

    /// <summary>As <see cref="TransactionAsync"/>, for callers already holding the control lock.</summary>
    public async Task<IReadOnlyList<object?>> RunTransactionUnlockedAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken)
    {
        var context = new TransactionContext(this);
        var prepared = new List<TransactionAction>(actions.Count);
        var quiesced = new List<IDisposable>();
        try
        {
            foreach (var node in Nodes)
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
                    for (var j = prepared.Count - 1; j >= 0; j--)
                        prepared[j].Abort(context);
                    throw new TransactionFailedException(i, e);
                }
            }
            foreach (var action in prepared)
                action.Commit(context);
        }
        finally
        {
            foreach (var q in quiesced)
                q.Dispose();
        }
        await PersistAsync(context, cancellationToken).ConfigureAwait(false);
        foreach (var action in prepared)
            action.AfterCommit(context);
        return [.. actions.Select(a => a.Result)];
    }

    private async Task PersistAsync(TransactionContext context, CancellationToken cancellationToken)
    {
        var removed = context.Removed.ToHashSet();
        var save = context.Touched
            .Where(t => !removed.Contains((t.Node.Name, t.Bitmap.Name)) && t.Node.FindBitmap(t.Bitmap.Name) == t.Bitmap)
            .Select(t => ToRecord(t.Node, t.Bitmap, inUse: true, content: null))
            .ToList();
        if (context.Removed.Count > 0)
            await Store.DeleteBitmapsAsync(context.Removed, cancellationToken).ConfigureAwait(false);
        if (save.Count > 0)
            await Store.SaveBitmapsAsync(save, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Persists the current flags of a bitmap (jobs call this when they change busy/enabled).</summary>
    public Task SaveBitmapAsync(BlockNode node, DirtyBitmap bitmap, CancellationToken cancellationToken = default) =>
        Store.SaveBitmapsAsync([ToRecord(node, bitmap, inUse: true, content: null)], cancellationToken);

    // ---- records ---------------------------------------------------------------------------

    public static NodeRecord ToRecord(BlockNode node) =>
        new(node.Name, node.Driver, node.Path, node.Uri, node.Size, node.ReadOnly, node.CreatedAt);

    private BitmapRecord ToRecord(BlockNode node, DirtyBitmap bitmap, bool inUse, byte[]? content, bool withImageStamp = false)
    {
        long? size = null;
        DateTime? mtime = null;
        if (withImageStamp)
        {
            size = node.Size;
            if (node.Path is { } path)
                mtime = File.GetLastWriteTimeUtc(Root.Resolve(path));
        }
        return new BitmapRecord(node.Name, bitmap.Name, bitmap.Granularity, bitmap.Persistent, bitmap.Disabled,
            bitmap.Inconsistent, inUse, content, size, mtime, bitmap.CreatedAt);
    }
}
