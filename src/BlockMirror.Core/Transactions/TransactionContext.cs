using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Transactions;

/// <summary>What actions share during one transaction: the layer, what must be persisted, and the memory it takes.</summary>
public sealed class TransactionContext(BlockLayer layer)
{
    private readonly HashSet<DirtyBitmap> _checkpointCharged = [];

    public BlockLayer Layer { get; } = layer;

    /// <summary>Bitmaps whose record changed and must be saved (stored before the transaction commits).</summary>
    internal HashSet<(BlockNode Node, DirtyBitmap Bitmap)> Touched { get; } = [];

    /// <summary>Bitmaps the transaction removes (prepare records them; deleted from the store with the saves, in one store transaction, before commit).</summary>
    internal List<(string Node, string Name)> Removed { get; } = [];

    /// <summary>
    /// Memory the transaction holds until it ends (backups for abort, checkpoint contents being
    /// serialized), beside what the bitmaps it adds take for good (counted by the layer once added).
    /// </summary>
    internal long TransientBitmapBytes { get; private set; }

    public void Touch(BlockNode node, DirtyBitmap bitmap) => Touched.Add((node, bitmap));

    /// <summary>
    /// Refuses the action (<c>bitmap-memory-exceeded</c>) unless <paramref name="lastingBytes"/> (a
    /// bitmap about to be added), <paramref name="transientBytes"/> (copies held until the transaction
    /// ends) and the serialized content of each persistent bitmap in <paramref name="checkpointed"/>
    /// (stored by the transaction; counted once per bitmap) fit the layer's bitmap memory budget beside
    /// what is in use and what the transaction holds already. Call before allocating or changing
    /// anything, so that a refusal changes nothing.
    /// </summary>
    public void ReserveBitmapMemory(long lastingBytes, long transientBytes, params ReadOnlySpan<DirtyBitmap> checkpointed)
    {
        var serialized = 0L;
        foreach (var b in checkpointed)
        {
            if (b.Persistent && !_checkpointCharged.Contains(b))
                serialized += b.SerializedBytes;
        }
        Layer.EnsureBitmapMemory(lastingBytes + transientBytes + serialized + TransientBitmapBytes);
        TransientBitmapBytes += transientBytes + serialized;
        foreach (var b in checkpointed)
        {
            if (b.Persistent)
                _checkpointCharged.Add(b);
        }
    }
}
