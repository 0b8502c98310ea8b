namespace BlockMirror.Core.Nodes;

/// <summary>
/// A filter a job inserts on a node's write path (QEMU's mirror_top). It receives every
/// content-changing request after range checks, inside the node's quiesce gate, and must pass it
/// down by calling <see cref="BlockNode.ApplyAndMarkAsync"/>, which journals it ahead, applies it
/// to the image and marks the node's enabled bitmaps (whatever the result); what it does around
/// that (mark its own bitmap, copy to a target) is its business. A filter that refuses a request
/// throws without passing it down, and then nothing is journaled or marked.
/// </summary>
public interface IWriteFilter
{
    ValueTask WriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken);
}
