using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Transactions;

/// <summary>block-dirty-bitmap-enable / -disable: ALLOW_RO check, remember and apply, restore on abort.</summary>
public sealed class BitmapEnableAction(string node, string name, bool enable) : TransactionAction
{
    private DirtyBitmap? _bitmap;
    private bool _wasDisabled;

    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        var n = context.Layer.GetNode(node);
        _bitmap = n.GetBitmap(name);
        _bitmap.Check(BitmapCheck.AllowReadOnly);
        context.ReserveBitmapMemory(0, 0, _bitmap);
        _wasDisabled = _bitmap.Disabled;
        _bitmap.Disabled = !enable;
        context.Touch(n, _bitmap);
        Result = _bitmap;
        return ValueTask.CompletedTask;
    }

    public override void AbortControlLocked(TransactionContext context)
    {
        if (_bitmap is not null)
            _bitmap.Disabled = _wasDisabled;
    }
}
