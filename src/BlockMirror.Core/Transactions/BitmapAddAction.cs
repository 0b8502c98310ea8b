using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Transactions;

/// <summary>block-dirty-bitmap-add: creates the bitmap in prepare, releases it on abort.</summary>
public sealed class BitmapAddAction(string node, string name, long? granularity, bool persistent, bool disabled) : TransactionAction
{
    private DirtyBitmap? _added;
    private Nodes.BlockNode? _node;

    public override ValueTask PrepareAsync(TransactionContext context)
    {
        _node = context.Layer.GetNode(node);
        Names.Validate("bitmap", name);
        var g = granularity ?? DirtyBitmap.DefaultGranularity;
        if (!DirtyBitmap.IsValidGranularity(g))
            throw BlockErrors.InvalidGranularity("Granularity must be power of 2 and at least 512 (and at most 2^31)");
        if (_node.FindBitmap(name) is not null)
            throw BlockErrors.BitmapExists(name);
        // A new bitmap would record writes the node refuses, for a file no longer under its path.
        if (_node.ImageReplacedReason is { } replaced)
            throw BlockErrors.ImageReplaced(_node.Name, replaced);
        _added = new DirtyBitmap(name, _node.Size, g, persistent, disabled) { CreatedAt = context.Layer.UtcNow };
        _node.AddBitmap(_added);
        context.Touch(_node, _added);
        Result = _added;
        return ValueTask.CompletedTask;
    }

    public override void Abort(TransactionContext context)
    {
        if (_added is not null)
            _node!.RemoveBitmap(_added);
    }
}
