using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// block-dirty-bitmap-remove: checks busy and read-only (an inconsistent bitmap can always be
/// removed), marks it busy in prepare so later actions cannot use it (its row is deleted with the
/// transaction's store, before commit), releases it on commit.
/// </summary>
public sealed class BitmapRemoveAction(string node, string name) : TransactionAction
{
    private BlockNode? _node;
    private DirtyBitmap? _bitmap;

    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        _node = context.Layer.GetNode(node);
        _bitmap = _node.GetBitmap(name);
        _bitmap.Check(BitmapCheck.Busy | BitmapCheck.ReadOnly);
        _bitmap.Busy = true;
        context.Removed.Add((_node.Name, _bitmap.Name));
        return ValueTask.CompletedTask;
    }

    public override void CommitControlLocked(TransactionContext context)
    {
        _bitmap!.Busy = false;
        _node!.RemoveBitmap(_bitmap);
    }

    public override void AbortControlLocked(TransactionContext context)
    {
        if (_bitmap is not null)
            _bitmap.Busy = false;
    }
}
