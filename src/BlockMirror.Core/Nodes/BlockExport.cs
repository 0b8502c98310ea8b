namespace BlockMirror.Core.Nodes;

/// <summary>An NBD export of a node: the node cannot be deleted and the listed bitmaps are busy while it exists.</summary>
public sealed record BlockExport(string Name, string Node, bool Writable, IReadOnlyList<string> Bitmaps, DateTime CreatedAt);
