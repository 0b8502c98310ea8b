namespace BlockMirror.Core.Nodes;

/// <summary>
/// A filter a job inserts on a node's write path (QEMU's mirror_top). It receives every
/// content-changing request after range checks and must apply it to the node's image by
/// calling <see cref="BlockNode.ApplyToImageAsync"/>; what it does around that (mark its
/// bitmap, copy to a target) is its business. The node marks its own enabled bitmaps after
/// the filter returns.
/// </summary>
public interface IWriteFilter
{
    ValueTask WriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken);
}
