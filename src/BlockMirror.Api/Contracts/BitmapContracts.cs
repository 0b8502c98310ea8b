namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/nodes/{node}/bitmaps.</summary>
/// <param name="Name">Bitmap name, unique on the node.</param>
/// <param name="Granularity">Bytes per bit, a power of two in 512 … 2^31; default 64 KiB.</param>
/// <param name="Persistent">Survives a restart of the service.</param>
/// <param name="Disabled">Created not recording.</param>
public sealed record CreateBitmapRequest(string? Name, long? Granularity, bool? Persistent, bool? Disabled);

/// <summary>A dirty bitmap.</summary>
/// <param name="Count">Dirty bytes: dirty granules × granularity, the last one clipped to the node size.</param>
/// <param name="Inconsistent">The bitmap could not be proven complete (after an unclean stop, a damaged journal, a replaced image): it can only be removed.</param>
/// <param name="InconsistentReason">Why it is inconsistent; null when it is not.</param>
public sealed record BitmapDto(string Node, string Name, long Granularity, long Count, bool Recording, bool Busy, bool Persistent, bool Inconsistent, string? InconsistentReason);

/// <summary>Body of POST .../bitmaps/{name}/merge.</summary>
public sealed record MergeBitmapsRequest(IReadOnlyList<BitmapSourceDto>? Sources);

/// <summary>A merge source; <c>node</c> defaults to the target's node.</summary>
public sealed record BitmapSourceDto(string? Node, string? Name);

/// <summary>A dirty range.</summary>
public sealed record DirtyExtentDto(long Offset, long Length);

/// <summary>SHA-256 of a bitmap's content.</summary>
public sealed record Sha256Dto(string Sha256);
