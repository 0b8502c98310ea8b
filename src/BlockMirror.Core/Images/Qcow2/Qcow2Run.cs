namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// A stretch of guest bytes that reads one way (QEMU's qcow2_get_host_offset answer): data at a
/// contiguous host offset, zeroes, not in this layer, or one compressed cluster (<see cref="Entry"/>).
/// <see cref="Copied"/>: data clusters with refcount one, so a write may go in place.
/// </summary>
internal readonly record struct Qcow2Run(Qcow2RunKind Kind, long HostOffset, long Length, ulong Entry, bool Copied);
