namespace BlockMirror.Api.Data;

/// <summary>Row of table <c>exports</c>: an NBD export, served again at every start while its node and bitmaps come back.</summary>
public sealed class ExportEntity
{
    public required string Name { get; set; }

    /// <summary>The node served (by name: a pivot keeps the device's name, so its exports follow it).</summary>
    public required string Node { get; set; }
    public bool Writable { get; set; }

    /// <summary>The bitmaps exposed as qemu:dirty-bitmap contexts (a JSON array in the column).</summary>
    public List<string> Bitmaps { get; set; } = [];
    public DateTime CreatedAt { get; set; }
}
