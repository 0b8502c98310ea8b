using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Transactions;

/// <summary>block-dirty-bitmap-clear: DEFAULT check, clear keeping a backup that abort restores.</summary>
public sealed class BitmapClearAction(string node, string name) : TransactionAction
{
    private DirtyBitmap? _bitmap;
    private HBitmap? _backup;

    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        var n = context.Layer.GetNode(node);
        _bitmap = n.GetBitmap(name);
        _bitmap.Check(BitmapCheck.Default);
        context.ReserveBitmapMemory(0, _bitmap.MemoryBytes, _bitmap);
        _backup = _bitmap.SnapshotBits();
        _bitmap.Clear();
        context.Touch(n, _bitmap);
        Result = _bitmap;
        return ValueTask.CompletedTask;
    }

    public override void AbortControlLocked(TransactionContext context)
    {
        if (_backup is not null)
            _bitmap!.RestoreBits(_backup);
    }
}
