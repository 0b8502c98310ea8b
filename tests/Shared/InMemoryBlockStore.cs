using BlockMirror.Core.State;

namespace BlockMirror.Tests.Shared;

/// <summary>An <see cref="IBlockStore"/> in memory, for tests of the block layer without SQLite.</summary>
public sealed class InMemoryBlockStore : IBlockStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, NodeRecord> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<(string, string), BitmapRecord> _bitmaps = [];
    private readonly Dictionary<string, ExportRecord> _exports = new(StringComparer.Ordinal);

    /// <summary>When set, every write throws it and changes nothing (a database that cannot be written).</summary>
    public Exception? FailWrites { get; set; }

    public IReadOnlyDictionary<string, NodeRecord> NodesSnapshot()
    {
        lock (_lock)
            return new Dictionary<string, NodeRecord>(_nodes);
    }

    public IReadOnlyDictionary<string, ExportRecord> ExportsSnapshot()
    {
        lock (_lock)
            return new Dictionary<string, ExportRecord>(_exports);
    }

    public BitmapRecord? FindBitmap(string node, string name)
    {
        lock (_lock)
            return _bitmaps.GetValueOrDefault((node, name));
    }

    public Task<IReadOnlyList<NodeRecord>> LoadNodesAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
            return Task.FromResult<IReadOnlyList<NodeRecord>>([.. _nodes.Values]);
    }

    public Task<IReadOnlyList<BitmapRecord>> LoadBitmapsAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
            return Task.FromResult<IReadOnlyList<BitmapRecord>>([.. _bitmaps.Values]);
    }

    public Task SaveNodeAsync(NodeRecord node, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
            _nodes[node.Name] = node;
        return Task.CompletedTask;
    }

    public Task DeleteNodeAsync(string name, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
        {
            _nodes.Remove(name);
            foreach (var key in _bitmaps.Keys.Where(k => k.Item1 == name).ToList())
                _bitmaps.Remove(key);
        }
        return Task.CompletedTask;
    }

    public Task SaveBitmapsAsync(IReadOnlyCollection<BitmapRecord> bitmaps, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
        {
            foreach (var b in bitmaps)
                _bitmaps[(b.Node, b.Name)] = b;
        }
        return Task.CompletedTask;
    }

    public Task SavePivotAsync(NodeRecord device, IReadOnlyCollection<BitmapRecord> deviceBitmaps, string consumedNode, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
        {
            _nodes.Remove(consumedNode);
            foreach (var key in _bitmaps.Keys.Where(k => k.Item1 == consumedNode).ToList())
                _bitmaps.Remove(key);
            _nodes[device.Name] = device;
            foreach (var b in deviceBitmaps)
                _bitmaps[(b.Node, b.Name)] = b;
        }
        return Task.CompletedTask;
    }

    public Task SaveBitmapChangesAsync(IReadOnlyCollection<BitmapRecord> saved, IReadOnlyCollection<(string Node, string Name)> deleted, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
        {
            foreach (var key in deleted)
                _bitmaps.Remove(key);
            foreach (var b in saved)
                _bitmaps[(b.Node, b.Name)] = b;
        }
        return Task.CompletedTask;
    }

    public Task DeleteBitmapsAsync(IReadOnlyCollection<(string Node, string Name)> bitmaps, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
        {
            foreach (var key in bitmaps)
                _bitmaps.Remove(key);
        }
        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<ExportRecord>> LoadExportsAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
            return Task.FromResult<IReadOnlyList<ExportRecord>>([.. _exports.Values]);
    }

    public Task SaveExportAsync(ExportRecord export, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
            _exports[export.Name] = export;
        return Task.CompletedTask;
    }

    public Task DeleteExportAsync(string name, CancellationToken cancellationToken = default)
    {
        if (FailWrites is { } failure)
            return Task.FromException(failure);
        lock (_lock)
            _exports.Remove(name);
        return Task.CompletedTask;
    }
}
