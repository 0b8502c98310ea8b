namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/nodes.</summary>
/// <param name="Name">Node name, unique in the service.</param>
/// <param name="Driver"><c>raw</c> (a local file) or <c>nbd</c> (a remote export).</param>
/// <param name="Path">Raw image path relative to the image root.</param>
/// <param name="Uri">NBD URI: nbd://host:port/export or nbd+unix:///export?socket=/path.</param>
/// <param name="Create">Create the image (sparse) with this size instead of opening an existing one.</param>
/// <param name="ReadOnly">Open without write access.</param>
public sealed record CreateNodeRequest(string? Name, string? Driver, string? Path, string? Uri, CreateImageSpec? Create, bool? ReadOnly);

/// <summary>Image creation parameters.</summary>
/// <param name="Size">Virtual size in bytes, a multiple of 512.</param>
public sealed record CreateImageSpec(long? Size);

/// <summary>A node: an image the service owns.</summary>
/// <param name="ImageReplaced">
/// The node's path no longer names the file it has open (the file was renamed over or removed, or a
/// directory on the path became a symbolic link leading outside the image root): writes are refused
/// with <c>image-replaced</c> and its persistent bitmaps are inconsistent. Remove the node and add it again.
/// </param>
/// <param name="ImageReplacedReason">What was found; null while <c>imageReplaced</c> is false.</param>
public sealed record NodeDto(
    string Name,
    string Driver,
    string? Path,
    string? Uri,
    long Size,
    long AllocatedBytes,
    bool ReadOnly,
    bool Busy,
    string? JobId,
    IReadOnlyList<string> Bitmaps,
    IReadOnlyList<string> Exports,
    DateTime CreatedAt,
    bool ImageReplaced,
    string? ImageReplacedReason);

/// <summary>Body of POST /api/v1/nodes/{node}/zero.</summary>
public sealed record ZeroRequest(long? Offset, long? Length, bool? MayUnmap);

/// <summary>Body of POST /api/v1/nodes/{node}/discard.</summary>
public sealed record DiscardRequest(long? Offset, long? Length);

/// <summary>One allocation extent of a node: <c>data</c>, or <c>zero</c> for a hole or known zeroes.</summary>
public sealed record AllocationExtentDto(long Offset, long Length, string Type);
