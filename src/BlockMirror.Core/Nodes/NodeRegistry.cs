using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.State;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Nodes;

/// <summary>
/// The nodes and exports of the layer by name (QEMU's graph_bdrv_states and block exports), and the
/// operations that add and remove them. Changes run under the control lock (methods ending in
/// <c>ControlLocked</c>); lookups and snapshots are lock-free for the data path and the host.
/// </summary>
public sealed partial class NodeRegistry(
    ImageRoot root, ImageOpener opener, IBlockStore store, ImageReplacementCheck replacements, TimeProvider time,
    ILogger<NodeRegistry> logger)
{
    // Guards the dictionaries (the data path and the host read them outside the control lock).
    private readonly Lock _namesLock = new();
    private readonly Dictionary<string, BlockNode> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, BlockExport> _exports = new(StringComparer.Ordinal);
    // Stored exports not served since the start (RestoreExportsControlLockedAsync); the NBD server never sees them.
    private readonly Dictionary<string, UnservedExport> _unserved = new(StringComparer.Ordinal);
    private readonly List<IExportServer> _exportServers = [];

    /// <summary>Raised (under the control lock) when a node is added, so the host can wire hooks.</summary>
    public event Action<BlockNode>? NodeAdded;

    /// <summary>Attaches the layer's own hooks to a node before anyone can reach it (the persistent bitmaps' journal).</summary>
    internal Action<BlockNode>? Attaching { get; set; }

    /// <summary>A snapshot of the nodes, in creation order.</summary>
    public IReadOnlyList<BlockNode> Nodes
    {
        get
        {
            lock (_namesLock)
                return [.. _nodes.Values.OrderBy(n => n.CreatedAt).ThenBy(n => n.Name, StringComparer.Ordinal)];
        }
    }

    public IReadOnlyList<BlockExport> Exports
    {
        get
        {
            lock (_namesLock)
                return [.. _exports.Values.OrderBy(e => e.CreatedAt)];
        }
    }

    public BlockNode? FindNode(string name)
    {
        lock (_namesLock)
            return _nodes.GetValueOrDefault(name);
    }

    public BlockNode GetNode(string name) => FindNode(name) ?? throw BlockErrors.NodeNotFound(name);

    public BlockExport? FindExport(string name)
    {
        lock (_namesLock)
            return _exports.GetValueOrDefault(name);
    }

    /// <summary>Stored exports that could not be served again at start-up, in creation order.</summary>
    public IReadOnlyList<UnservedExport> UnservedExports
    {
        get
        {
            lock (_namesLock)
                return [.. _unserved.Values.OrderBy(e => e.Record.CreatedAt)];
        }
    }

    public UnservedExport? FindUnservedExport(string name)
    {
        lock (_namesLock)
            return _unserved.GetValueOrDefault(name);
    }

    // ---- nodes ----------------------------------------------------------------------------------

    /// <summary>blockdev-add: the image opened (or created) by its driver, the node stored, then registered.</summary>
    public async Task<BlockNode> CreateControlLockedAsync(NodeSpec spec, CancellationToken cancellationToken)
    {
        Names.Validate("node", spec.Name);
        if (FindNode(spec.Name) is not null)
            throw BlockErrors.NodeExists(spec.Name);
        var opened = await opener.OpenAsync(spec.Driver, new ImageRequest(spec.Path, spec.Uri, spec.CreateSize, spec.ReadOnly, spec.CreateOptions, spec.CacheDirect), cancellationToken).ConfigureAwait(false);
        var node = new BlockNode(spec.Name, spec.Driver, opened.Image, opened.Path, opened.Uri, spec.ReadOnly, time.GetUtcNow().UtcDateTime);
        try
        {
            await store.SaveNodeAsync(NodeRecord.Of(node), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // Refused: nothing may remain, not even the image this call created (a retry would find it and get image-exists).
            await opened.Image.DisposeAsync().ConfigureAwait(false);
            if (spec.CreateSize is not null && opened.Path is not null)
                TryDeleteImageFile(node, root.Resolve(opened.Path));
            throw;
        }
        AddControlLocked(node);
        return node;
    }

    /// <summary>Registers a node (created, or reopened at load): hooks first, so no write reaches it without them.</summary>
    internal void AddControlLocked(BlockNode node)
    {
        Attaching?.Invoke(node);
        lock (_namesLock)
            _nodes.Add(node.Name, node);
        NodeAdded?.Invoke(node);
    }

    /// <summary>blockdev-del; with <paramref name="deleteImage"/> the image file goes too. Every refusal comes before any change.</summary>
    public async Task DeleteControlLockedAsync(string name, bool deleteImage, CancellationToken cancellationToken)
    {
        var node = GetNode(name);
        if (node.JobId is { } job)
            throw BlockErrors.NodeBusy(name, $"block device is in use by block job: mirror ({job})");
        if (node.Exports.Count > 0)
            throw BlockErrors.NodeBusy(name, $"block device is in use by NBD export '{node.Exports.First()}'");
        // The file to delete must still be the node's own and its path must still resolve inside the root.
        string? imageFile = null;
        if (deleteImage && node.Image is HostDeviceImage)
            throw BlockErrors.Invalid("device-not-deletable", $"Node '{name}' is on the block device '{node.Path}': deleteImage would remove the device's node, and devices are never deleted");
        if (deleteImage && node.Path is { } path)
        {
            replacements.ThrowIfReplacedControlLocked(node);
            imageFile = root.Resolve(path);
        }
        // Stored first: a refusal by the store leaves the node as it was, in memory and on disk.
        await store.DeleteNodeAsync(name, cancellationToken).ConfigureAwait(false);
        using (await node.QuiesceGate.QuiesceAsync(cancellationToken).ConfigureAwait(false))
            ForgetControlLocked(name);
        if (imageFile is null)
            await StoreImageBitmapsAtCloseAsync(node, cancellationToken).ConfigureAwait(false);
        await node.Image.DisposeAsync().ConfigureAwait(false);
        if (imageFile is not null)
            TryDeleteImageFile(node, imageFile);
    }

    /// <summary>
    /// As QEMU at blockdev-del: the node's persistent bitmaps stored in its image (a qcow2 image that
    /// holds bitmaps), in-use cleared, so that qemu-img and QEMU find them exact. The node is deleted
    /// already: a failure leaves them in use in the image, which nobody then trusts.
    /// </summary>
    private async Task StoreImageBitmapsAtCloseAsync(BlockNode node, CancellationToken cancellationToken)
    {
        try
        {
            await node.Image.FlushAsync(cancellationToken).ConfigureAwait(false);
            await ImageBitmaps.StoreAsync(node, b => b.Serialize(), inUse: false, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or BlockException or ArgumentException)
        {
            LogImageBitmapsNotStored(logger, e, node.Name);
        }
    }

    [LoggerMessage(40, LogLevel.Warning, "Node '{Node}' was deleted, but its persistent bitmaps could not be stored in its image; they stay in use there")]
    private static partial void LogImageBitmapsNotStored(ILogger logger, Exception exception, string node);

    /// <summary>Removes a node from the registry without touching its image (a pivot consumes the target).</summary>
    internal void ForgetControlLocked(string name)
    {
        lock (_namesLock)
            _nodes.Remove(name);
    }

    /// <summary>
    /// Quiesces the writes of every node in the lock order (docs/architecture.md): creation order, the
    /// nodes a job writes as their owner (mirror targets) last, since a write-blocking write holds its
    /// device's gate while its copy waits for the target's, so a target quiesced first would deadlock
    /// against the device's drain. Dispose the result to let the writes go on.
    /// </summary>
    internal async Task<IDisposable> QuiesceAllAsync(CancellationToken cancellationToken)
    {
        var quiesced = new QuiescedNodes();
        try
        {
            foreach (var node in Nodes.OrderBy(n => n.WrittenByItsJobOnly))
                quiesced.Add(await node.QuiesceGate.QuiesceAsync(cancellationToken).ConfigureAwait(false));
            return quiesced;
        }
        catch
        {
            quiesced.Dispose();
            throw;
        }
    }

    private void TryDeleteImageFile(BlockNode node, string file)
    {
        try
        {
            File.Delete(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The node is gone either way; the file stays for the operator to remove.
            LogImageNotDeleted(logger, e, node.Name, file);
        }
    }

    // ---- exports (the NBD server reads this registry) -------------------------------------------

    /// <summary>
    /// block-export-add: checked as QEMU checks it, stored, then served. Stored first: a refusal by the
    /// store serves nothing, and a kill -9 after the store finds the export at the next start (served
    /// again, as every stored export is), never an export served that a restart would forget.
    /// </summary>
    public async Task<BlockExport> AddExportControlLockedAsync(string name, string nodeName, bool writable, IReadOnlyList<string> bitmaps, CancellationToken cancellationToken)
    {
        Names.Validate("export", name);
        if (FindExport(name) is not null || FindUnservedExport(name) is not null)
            throw BlockErrors.Conflict("export-exists", $"Block export id '{name}' is already in use");
        var (node, resolved) = ResolveExport(nodeName, writable, bitmaps);
        var export = new BlockExport(name, nodeName, writable, [.. resolved.Select(b => b.Name)], time.GetUtcNow().UtcDateTime);
        await store.SaveExportAsync(ExportRecord.Of(export), cancellationToken).ConfigureAwait(false);
        ServeControlLocked(export, node, resolved);
        return export;
    }

    /// <summary>
    /// The node and each listed bitmap checked in QEMU's order (nbd_export_create): each bitmap's
    /// checks before the next, so the refusal names the bitmap QEMU would name. Changes nothing.
    /// </summary>
    private (BlockNode Node, List<DirtyBitmap> Bitmaps) ResolveExport(string nodeName, bool writable, IReadOnlyList<string> bitmaps)
    {
        var node = GetNode(nodeName);
        if (writable && node.ReadOnly)
            throw BlockErrors.NodeReadOnly(nodeName);
        replacements.ThrowIfReplacedControlLocked(node);
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
        return (node, resolved);
    }

    /// <summary>The export becomes visible to the NBD server; its bitmaps are busy from now on.</summary>
    private void ServeControlLocked(BlockExport export, BlockNode node, List<DirtyBitmap> bitmaps)
    {
        foreach (var bitmap in bitmaps)
            bitmap.Busy = true;
        lock (_namesLock)
            _exports.Add(export.Name, export);
        node.AddExport(export.Name);
    }

    /// <summary>
    /// At start-up, after the nodes are open: every stored export served again with its name, write
    /// access, bitmaps and creation time, through the same checks as its creation. One that fails
    /// them (its node did not come back, a bitmap it exposed is gone or inconsistent) is kept, record
    /// and name, as an <see cref="UnservedExport"/> and listed in <paramref name="failures"/>; the
    /// start goes on. QEMU's exports do not survive a restart at all; ours are part of the record.
    /// </summary>
    internal async Task RestoreExportsControlLockedAsync(List<string> failures, CancellationToken cancellationToken)
    {
        foreach (var record in (await store.LoadExportsAsync(cancellationToken).ConfigureAwait(false)).OrderBy(e => e.CreatedAt))
        {
            try
            {
                var (node, resolved) = ResolveExport(record.Node, record.Writable, record.Bitmaps);
                ServeControlLocked(new BlockExport(record.Name, record.Node, record.Writable, [.. resolved.Select(b => b.Name)], record.CreatedAt), node, resolved);
            }
            catch (BlockException e)
            {
                var unserved = new UnservedExport(record, e.Code, NotServedReason(record, e));
                lock (_namesLock)
                    _unserved.Add(record.Name, unserved);
                failures.Add($"export '{record.Name}': {unserved.Reason}");
            }
        }
    }

    private static string NotServedReason(ExportRecord record, BlockException e) => e.Code == "node-not-found"
        ? $"its node '{record.Node}' was not restored (see the start-up log); bring its image back and restart, or remove the export"
        : $"{e.Message}; remove the export and add it again";

    /// <summary>
    /// block-export-del: the export's record removed first (a refusal by the store changes nothing; a
    /// kill -9 after it finds no export at the next start), then it is no longer served and its
    /// bitmaps are no longer busy. An export that is not served has only its record to remove.
    /// </summary>
    public async Task<string> RemoveExportControlLockedAsync(string name, CancellationToken cancellationToken)
    {
        var export = FindExport(name);
        if (export is null && FindUnservedExport(name) is null)
            throw BlockErrors.NotFound("export-not-found", $"Export '{name}' is not found");
        await store.DeleteExportAsync(name, cancellationToken).ConfigureAwait(false);
        lock (_namesLock)
        {
            _exports.Remove(name);
            _unserved.Remove(name);
        }
        if (export is not null && FindNode(export.Node) is { } node)
        {
            node.RemoveExport(name);
            foreach (var b in export.Bitmaps)
            {
                if (node.FindBitmap(b) is { } bitmap)
                    bitmap.Busy = false;
            }
        }
        return name;
    }

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
    public BlockNode ResolveLoopback(BlockNode node)
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

    [LoggerMessage(1, LogLevel.Warning, "Node '{Node}': its image file '{File}' could not be deleted; remove it by hand")]
    private static partial void LogImageNotDeleted(ILogger logger, Exception exception, string node, string file);

    /// <summary>The quiesces of <see cref="QuiesceAllAsync"/>, released together.</summary>
    private sealed class QuiescedNodes : IDisposable
    {
        private readonly List<IDisposable> _quiesces = [];

        public void Add(IDisposable quiesce) => _quiesces.Add(quiesce);

        public void Dispose()
        {
            foreach (var q in _quiesces)
                q.Dispose();
            _quiesces.Clear();
        }
    }
}
