using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>The durable record of a node; <paramref name="CacheDirect"/>: its image is opened with O_DIRECT.</summary>
public sealed record NodeRecord(string Name, string Driver, string? Path, string? Uri, long Size, bool ReadOnly, DateTime CreatedAt,
    bool CacheDirect = false)
{
    /// <summary>The record of <paramref name="node"/> as it is now (after a pivot: how its new image was opened).</summary>
    public static NodeRecord Of(BlockNode node) =>
        new(node.Name, node.Driver, node.Path, node.Uri, node.Size, node.ReadOnly, node.CreatedAt, node.Image.CacheDirect);
}
