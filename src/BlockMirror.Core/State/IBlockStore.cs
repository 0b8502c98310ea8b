namespace BlockMirror.Core.State;

/// <summary>
/// The block layer's durable record (SQLite in the host). Every control-plane change is
/// written through before the operation returns; the layer calls these under its control lock.
/// </summary>
public interface IBlockStore
{
    Task<IReadOnlyList<NodeRecord>> LoadNodesAsync(CancellationToken cancellationToken = default);

    Task<IReadOnlyList<BitmapRecord>> LoadBitmapsAsync(CancellationToken cancellationToken = default);

    Task SaveNodeAsync(NodeRecord node, CancellationToken cancellationToken = default);

    Task DeleteNodeAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>
    /// Inserts or updates bitmaps (all in one transaction). A record with <see cref="BitmapRecord.Content"/>
    /// is a checkpoint: content, <see cref="BitmapRecord.JournalSequence"/> and the image stamp replace the
    /// stored ones together. A record without content updates the flags and keeps the stored checkpoint.
    /// </summary>
    Task SaveBitmapsAsync(IReadOnlyCollection<BitmapRecord> bitmaps, CancellationToken cancellationToken = default);

    Task DeleteBitmapsAsync(IReadOnlyCollection<(string Node, string Name)> bitmaps, CancellationToken cancellationToken = default);

    /// <summary>
    /// A bitmap transaction's outcome in one store transaction: <paramref name="deleted"/> removed,
    /// <paramref name="saved"/> inserted or updated (as in <see cref="SaveBitmapsAsync"/>). A failure
    /// leaves the store as it was, so the block layer can abort the transaction whole.
    /// </summary>
    Task SaveBitmapChangesAsync(IReadOnlyCollection<BitmapRecord> saved, IReadOnlyCollection<(string Node, string Name)> deleted, CancellationToken cancellationToken = default);

    /// <summary>
    /// A mirror's pivot in one transaction: the device's record (now on the target's image), the
    /// device's bitmaps (checkpoints stamped with that image, as in <see cref="SaveBitmapsAsync"/>),
    /// and the consumed target node deleted with its bitmaps. A crash finds the pivot whole or not at
    /// all, never a device on the new image with checkpoints stamped for the old one.
    /// </summary>
    Task SavePivotAsync(NodeRecord device, IReadOnlyCollection<BitmapRecord> deviceBitmaps, string consumedNode, CancellationToken cancellationToken = default);

    /// <summary>The stored NBD exports (served again at start-up, after the nodes are open).</summary>
    Task<IReadOnlyList<ExportRecord>> LoadExportsAsync(CancellationToken cancellationToken = default);

    /// <summary>Stores a new export; the registry serves it only after this returns.</summary>
    Task SaveExportAsync(ExportRecord export, CancellationToken cancellationToken = default);

    /// <summary>Removes an export's record (nothing when there is none).</summary>
    Task DeleteExportAsync(string name, CancellationToken cancellationToken = default);
}
