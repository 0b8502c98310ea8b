using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// block-dirty-bitmap-add: creates the bitmap in prepare, releases it on abort. Checks in
/// qmp_block_dirty_bitmap_add's order: an empty name, the node, the granularity, a taken name,
/// then the rest of the naming rule (QEMU checks the length when it creates the bitmap).
/// </summary>
public sealed class BitmapAddAction(string node, string name, long? granularity, bool persistent, bool disabled) : TransactionAction
{
    private DirtyBitmap? _added;
    private Nodes.BlockNode? _node;

    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        if (string.IsNullOrEmpty(name))
            Names.Validate("bitmap", name);
        _node = context.Layer.GetNode(node);
        var g = granularity ?? DirtyBitmap.DefaultGranularity;
        if (!DirtyBitmap.IsValidGranularity(g))
            throw BlockErrors.InvalidGranularity("Granularity must be power of 2 and at least 512 (and at most 2^31)");
        if (_node.FindBitmap(name) is not null)
            throw BlockErrors.BitmapExists(name);
        Names.Validate("bitmap", name);
        // A new bitmap would record writes the node refuses, for a file no longer under its path.
        if (_node.ImageReplacedReason is { } replaced)
            throw BlockErrors.ImageReplaced(_node.Name, replaced);
        // QEMU's qcow2_co_can_store_new_dirty_bitmap: a version 2 image has no place for it.
        if (persistent && _node.Image is Images.Qcow2.Qcow2Image { CanStoreBitmaps: false })
            throw BlockErrors.Invalid("bitmap-not-storable", Images.Qcow2.Qcow2Image.CannotStoreInV2);
        // Refused before anything is allocated: a bitmap that cannot exist, cannot be stored, or does not fit the memory budget.
        context.Layer.CheckBitmapSize(_node.Size, g, persistent);
        var granules = DirtyBitmap.GranulesFor(_node.Size, g);
        context.ReserveBitmapMemory(
            context.Layer.LastingBytes(DirtyBitmap.MemoryBytesFor(granules), persistent),
            persistent ? DirtyBitmap.SerializedBytesFor(granules) : 0);
        _added = new DirtyBitmap(name, _node.Size, g, persistent, disabled) { CreatedAt = context.Layer.UtcNow };
        _node.AddBitmap(_added);
        context.Touch(_node, _added);
        Result = _added;
        return ValueTask.CompletedTask;
    }

    public override void AbortControlLocked(TransactionContext context)
    {
        if (_added is not null)
            _node!.RemoveBitmap(_added);
    }
}
