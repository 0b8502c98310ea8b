using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;
using BlockMirror.Api.Infrastructure;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/nodes/{node}/bitmaps (QEMU's block-dirty-bitmap-add).</summary>
/// <param name="Name">Bitmap name, unique on the node.</param>
/// <param name="Granularity">Bytes per bit: a power of two in 512 … 2^31 (an integer, or a size such as 64K). Default 64 KiB.</param>
/// <param name="Persistent">Survives a restart of the service (stored with the node's metadata, crash-exact). Default false.</param>
/// <param name="Disabled">Created not recording. Default false.</param>
public sealed record CreateBitmapRequest(
    [property: Required] string? Name,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? Granularity,
    bool? Persistent,
    bool? Disabled);

/// <summary>A dirty bitmap.</summary>
/// <param name="Node">The node it belongs to.</param>
/// <param name="Name">The bitmap's name.</param>
/// <param name="Granularity">Bytes per bit.</param>
/// <param name="Count">Dirty bytes: dirty granules × granularity, the last one clipped to the node size.</param>
/// <param name="Recording">Writes to the node mark it (false while disabled, also while a mirror holds it as its working bitmap).</param>
/// <param name="Busy">A job or an export uses it: it can be read, not changed.</param>
/// <param name="Persistent">Survives a restart of the service.</param>
/// <param name="Inconsistent">The bitmap could not be proven complete (after an unclean stop, a damaged journal, a replaced image): it can only be removed.</param>
/// <param name="InconsistentReason">Why it is inconsistent; null when it is not.</param>
public sealed record BitmapDto(string Node, string Name, long Granularity, long Count, bool Recording, bool Busy, bool Persistent, bool Inconsistent, string? InconsistentReason);

/// <summary>Body of POST .../bitmaps/{name}/merge (QEMU's block-dirty-bitmap-merge).</summary>
/// <param name="Sources">The bitmaps ORed into this one, in order; they may have other granularities.</param>
public sealed record MergeBitmapsRequest([property: Required] IReadOnlyList<BitmapSourceDto>? Sources);

/// <summary>A merge source.</summary>
/// <param name="Node">The source's node; default: the node of the bitmap merged into. A node of another size is refused (size-mismatch).</param>
/// <param name="Name">The source bitmap's name.</param>
public sealed record BitmapSourceDto(string? Node, [property: Required] string? Name);

/// <summary>A dirty range.</summary>
/// <param name="Offset">First byte of the range.</param>
/// <param name="Length">Bytes in the range (whole granules, the last one clipped to the node size).</param>
public sealed record DirtyExtentDto(long Offset, long Length);

/// <summary>SHA-256 of a bitmap's content.</summary>
/// <param name="Sha256">Lower-case hex digest: equal bitmaps (same size, granularity and bits) have equal digests.</param>
public sealed record Sha256Dto(string Sha256);
