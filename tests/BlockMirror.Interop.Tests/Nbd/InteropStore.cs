using BlockMirror.Core.State;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>An in-memory <see cref="IBlockStore"/>: the NBD interop tests need a block layer, not a database.</summary>
internal sealed class InteropStore : IBlockStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, NodeRecord> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<(string, string), BitmapRecord> _bitmaps = [];

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
        lock (_lock)
            _nodes[node.Name] = node;
        return Task.CompletedTask;
    }

    public Task DeleteNodeAsync(string name, CancellationToken cancellationToken = default)
    {
        lock (_lock)
            _nodes.Remove(name);
        return Task.CompletedTask;
    }

    public Task SaveBitmapsAsync(IReadOnlyCollection<BitmapRecord> bitmaps, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            foreach (var b in bitmaps)
                _bitmaps[(b.Node, b.Name)] = b;
        }
        return Task.CompletedTask;
    }

    public Task DeleteBitmapsAsync(IReadOnlyCollection<(string Node, string Name)> bitmaps, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            foreach (var key in bitmaps)
                _bitmaps.Remove(key);
        }
        return Task.CompletedTask;
    }
}
