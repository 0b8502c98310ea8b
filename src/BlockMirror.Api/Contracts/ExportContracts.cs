namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/exports.</summary>
/// <param name="Name">Export name clients ask for (NBD_OPT_GO).</param>
/// <param name="Node">The node served.</param>
/// <param name="Writable">Accept writes (they take the node's write path).</param>
/// <param name="Bitmaps">Bitmaps of the node exposed as qemu:dirty-bitmap:&lt;name&gt; contexts (busy while exported).</param>
public sealed record CreateExportRequest(string? Name, string? Node, bool? Writable, IReadOnlyList<string>? Bitmaps);

/// <summary>An NBD export.</summary>
public sealed record ExportDto(string Name, string Node, bool Writable, IReadOnlyList<string> Bitmaps, string? Uri, DateTime CreatedAt);
