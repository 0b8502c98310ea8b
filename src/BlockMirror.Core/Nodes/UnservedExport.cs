using BlockMirror.Core.State;

namespace BlockMirror.Core.Nodes;

/// <summary>
/// A stored export that could not be served again at start-up (its node did not come back, or a
/// bitmap it exposed did not, or is no longer usable). It keeps its name and its record, so an
/// operator sees it and why, and either brings the node back and restarts, or removes it.
/// </summary>
/// <param name="Record">What the export was created with.</param>
/// <param name="Code">The stable code of the refusal the export's creation would meet now (e.g. <c>node-not-found</c>).</param>
/// <param name="Reason">What was found, for a person.</param>
public sealed record UnservedExport(ExportRecord Record, string Code, string Reason)
{
    public string Name => Record.Name;
}
