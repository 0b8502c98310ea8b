using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>
/// The durable record of an NBD export: what <c>block-export-add</c> was asked, so that a restart
/// serves the node again under the same name, with the same write access and bitmaps.
/// </summary>
public sealed record ExportRecord(string Name, string Node, bool Writable, IReadOnlyList<string> Bitmaps, DateTime CreatedAt)
{
    public static ExportRecord Of(BlockExport export) => new(export.Name, export.Node, export.Writable, export.Bitmaps, export.CreatedAt);
}
