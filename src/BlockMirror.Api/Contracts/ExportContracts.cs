using System.ComponentModel.DataAnnotations;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/exports (QEMU's block-export-add for NBD).</summary>
/// <param name="Name">Export name clients ask for (NBD_OPT_GO), unique in the service.</param>
/// <param name="Node">The node served.</param>
/// <param name="Writable">Accept writes (they take the node's write path: its bitmaps record them). Default true.</param>
/// <param name="Bitmaps">Bitmaps of the node exposed as qemu:dirty-bitmap:&lt;name&gt; contexts (busy while exported; an enabled one needs a writable export).</param>
public sealed record CreateExportRequest([property: Required] string? Name, [property: Required] string? Node, bool? Writable, IReadOnlyList<string>? Bitmaps);

/// <summary>An NBD export.</summary>
/// <param name="Name">Export name.</param>
/// <param name="Node">The node served.</param>
/// <param name="Writable">Writes are accepted.</param>
/// <param name="Bitmaps">Bitmaps exposed as qemu:dirty-bitmap:&lt;name&gt; contexts.</param>
/// <param name="Uri">The URI a client connects to (nbd://host:port/name or nbd+unix:///name?socket=path; nbds:// and nbds+unix:// when the server requires TLS); null while the NBD server is off.</param>
/// <param name="CreatedAt">When the export was added (UTC).</param>
public sealed record ExportDto(string Name, string Node, bool Writable, IReadOnlyList<string> Bitmaps, string? Uri, DateTime CreatedAt);
