namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Where an L2 entry lives in the cache: the slot (-1 when the guest range has no L2 table), the
/// entry's index in the slice, and how many entries from there to the end of the slice (or, without a
/// table, to the end of the range the missing table would map).
/// </summary>
internal readonly record struct Qcow2L2Slice(int Slot, int Index, int Count);
