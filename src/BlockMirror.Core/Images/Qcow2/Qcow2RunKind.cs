namespace BlockMirror.Core.Images.Qcow2;

/// <summary>How a <see cref="Qcow2Run"/> reads.</summary>
internal enum Qcow2RunKind
{
    Data,
    Zero,
    Unallocated,
    Compressed,
}
