using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// block-dirty-bitmap-merge: target DEFAULT, each source ALLOW_RO, equal sizes; ORs the sources
/// in order into the target. Any failure leaves the target as it was (backup restored). The
/// checks run in block_dirty_bitmap_merge's order: the target is looked up, then each source is
/// looked up and checked (state, size) in turn, and only then the target's state, because QEMU
/// merges the sources into a scratch bitmap first and checks the target when it merges that in.
/// </summary>
public sealed class BitmapMergeAction(string node, string target, IReadOnlyList<BitmapSource> sources) : TransactionAction
{
    private DirtyBitmap? _target;
    private HBitmap? _backup;

    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        var n = context.Layer.GetNode(node);
        var t = n.GetBitmap(target);
        var resolved = new List<DirtyBitmap>(sources.Count);
        foreach (var s in sources)
        {
            var sourceNode = s.Node is null ? n : context.Layer.GetNode(s.Node);
            var b = sourceNode.GetBitmap(s.Name);
            b.Check(BitmapCheck.AllowReadOnly);
            if (b.Size != t.Size)
                throw BlockErrors.SizeMismatch(t.Size, b.Size);
            resolved.Add(b);
        }
        t.Check(BitmapCheck.Default);
        // The backup, and the largest copy one merge makes (the source's words, or its whole
        // hierarchy when granularities differ), are held while the transaction runs.
        var mergeCopy = resolved.Count == 0 ? 0 : resolved.Max(b => b.Granularity == t.Granularity ? b.SerializedBytes : b.MemoryBytes);
        context.ReserveBitmapMemory(0, t.MemoryBytes + mergeCopy, t);
        // Everything is checked before the first merge, so a refusal never leaves a half-merged target;
        // the backup still guards a later action's failure.
        _target = t;
        _backup = t.SnapshotBits();
        try
        {
            foreach (var b in resolved)
                t.MergeFrom(b);
        }
        catch
        {
            // This action's own abort is not called when its prepare fails: undo a partial merge here.
            t.RestoreBits(_backup);
            throw;
        }
        context.Touch(n, t);
        Result = t;
        return ValueTask.CompletedTask;
    }

    public override void AbortControlLocked(TransactionContext context)
    {
        if (_backup is not null)
            _target!.RestoreBits(_backup);
    }
}
