namespace BlockMirror.Nbd;

/// <summary>One block-status descriptor of a metadata context, placed at its offset in the export.</summary>
/// <param name="Flags">Context-specific: base:allocation HOLE=1, ZERO=2; qemu:dirty-bitmap DIRTY=1.</param>
public readonly record struct NbdExtent(long Offset, long Length, uint Flags)
{
    public long End => Offset + Length;
}
