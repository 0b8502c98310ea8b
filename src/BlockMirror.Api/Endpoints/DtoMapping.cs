using BlockMirror.Api.Contracts;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Api.Endpoints;

/// <summary>Block-layer objects to their REST shapes.</summary>
public static class DtoMapping
{
    public static NodeDto ToDto(this BlockNode node)
    {
        long allocated;
        try
        {
            allocated = node.Image.AllocatedBytes;
        }
        catch (IOException)
        {
            allocated = 0;
        }
        return new NodeDto(node.Name, node.Driver, node.Path, node.Uri, node.Size, allocated, node.ReadOnly, node.Busy, node.JobId,
            [.. node.Bitmaps.Select(b => b.Name)], [.. node.Exports], node.CreatedAt, node.ImageReplaced, node.ImageReplacedReason);
    }

    public static BitmapDto ToDto(this DirtyBitmap bitmap, BlockNode node) =>
        new(node.Name, bitmap.Name, bitmap.Granularity, bitmap.Count, bitmap.Recording, bitmap.Busy, bitmap.Persistent, bitmap.Inconsistent,
            bitmap.Inconsistent ? bitmap.InconsistentReason : null);
}
