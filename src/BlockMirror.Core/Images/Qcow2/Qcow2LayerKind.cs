namespace BlockMirror.Core.Images.Qcow2;

/// <summary>What a range is in one layer of a backing chain (QEMU's BDRV_BLOCK_DATA / _ZERO / neither).</summary>
public enum Qcow2LayerKind
{
    /// <summary>This layer holds data for the range (normal or compressed clusters).</summary>
    Data,
    /// <summary>This layer says the range reads as zeroes (zero clusters), whatever is below.</summary>
    Zero,
    /// <summary>This layer holds nothing here: reads fall through to the backing image (zeroes without one).</summary>
    Unallocated,
}
