using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Transactions;

/// <summary>What actions share during one transaction: the layer, and what must be persisted.</summary>
public sealed class TransactionContext(BlockLayer layer)
{
    public BlockLayer Layer { get; } = layer;

    /// <summary>Bitmaps whose record changed and must be saved after commit.</summary>
    internal HashSet<(BlockNode Node, DirtyBitmap Bitmap)> Touched { get; } = [];

    /// <summary>Bitmaps removed by the transaction (deleted from the store after commit).</summary>
    internal List<(string Node, string Name)> Removed { get; } = [];

    public void Touch(BlockNode node, DirtyBitmap bitmap) => Touched.Add((node, bitmap));
}
