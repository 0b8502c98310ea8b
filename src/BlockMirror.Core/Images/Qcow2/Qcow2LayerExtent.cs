namespace BlockMirror.Core.Images.Qcow2;

/// <summary>A range of one layer with one <see cref="Qcow2LayerKind"/>.</summary>
public readonly record struct Qcow2LayerExtent(long Offset, long Length, Qcow2LayerKind Kind)
{
    public long End => Offset + Length;
}
