using System.ComponentModel.DataAnnotations;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/exports (QEMU's block-export-add for NBD).</summary>
/// <param name="Name">Export name clients ask for (NBD_OPT_GO), unique in the service.</param>
/// <param name="Node">The node served.</param>
/// <param name="Writable">Accept writes (they take the node's write path: its bitmaps record them). Default true.</param>
/// <param name="Bitmaps">Bitmaps of the node exposed as qemu:dirty-bitmap:&lt;name&gt; contexts (busy while exported; an enabled one needs a writable export).</param>
public sealed record CreateExportRequest([property: Required] string? Name, [property: Required] string? Node, bool? Writable, IReadOnlyList<string>? Bitmaps);

/// <summary>An NBD export. Exports are stored: after a restart each is served again once its node and bitmaps are back.</summary>
/// <param name="Name">Export name.</param>
/// <param name="Node">The node served.</param>
/// <param name="Writable">Writes are accepted.</param>
/// <param name="Bitmaps">Bitmaps exposed as qemu:dirty-bitmap:&lt;name&gt; contexts.</param>
/// <param name="Uri">The URI a client connects to (nbd://host:port/name or nbd+unix:///name?socket=path; nbds:// and nbds+unix:// when the server requires TLS); null while the NBD server is off or the export is not served.</param>
/// <param name="CreatedAt">When the export was added (UTC).</param>
/// <param name="Served">
/// The NBD server serves it. False only for a stored export that could not be served again at the
/// last start (its node was not restored, or a bitmap it exposes is gone or unusable): clients are
/// refused as for an unknown export. Remove it (DELETE), or bring its node back and restart.
/// </param>
/// <param name="NotServedCode">
/// Why it is not served, as the stable code its creation would be refused with now: <c>node-not-found</c>
/// (the node's image could not be opened at start-up), <c>bitmap-not-found</c> (e.g. a bitmap that was
/// not persistent), <c>bitmap-inconsistent</c>, <c>image-replaced</c>, ...; null while served.
/// </param>
/// <param name="NotServedReason">What was found, for a person; null while served.</param>
public sealed record ExportDto(string Name, string Node, bool Writable, IReadOnlyList<string> Bitmaps, string? Uri, DateTime CreatedAt,
    bool Served, string? NotServedCode, string? NotServedReason);
