using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;
using BlockMirror.Api.Infrastructure;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/nodes: open (or create) an image the service then owns.</summary>
/// <param name="Name">Node name, unique in the service: 1–128 characters of [A-Za-z0-9._:-], starting with a letter, digit or '_'.</param>
/// <param name="Driver">How the image is reached: <c>raw</c> (a file under the image root, or a host block device, needs <c>path</c>), <c>qcow2</c> (a qcow2 image file under the image root, needs <c>path</c>) or <c>nbd</c> (a remote NBD export, needs <c>uri</c>).</param>
/// <param name="Path">raw, qcow2: the image file, relative to the image root (Storage:Root), no '..'; raw: or a host block device by absolute path (/dev/...), only where Storage:Devices allows it (device-not-allowed otherwise).</param>
/// <param name="Uri">nbd: nbd://host:port/export or nbd+unix:///export?socket=/path.sock; nbds:// and nbds+unix:// require TLS.</param>
/// <param name="Create">raw, qcow2: create the image with this size instead of opening an existing one (raw: a sparse file; qcow2: as <c>qemu-img create -f qcow2</c>); the file must not exist. Never for a device (device-not-creatable).</param>
/// <param name="ReadOnly">Open without write access: writes, mirrors into it and writable exports are refused. Default false.</param>
/// <param name="Tls">
/// nbd: connect with TLS (NBD_OPT_STARTTLS), with this host's identity from <c>Nbd:Client:Tls</c>;
/// the node's <c>uri</c> then shows the TLS scheme (<c>nbds://</c>), which says the same. Default: what the URI's scheme says.
/// </param>
/// <param name="Cache">raw: how the image uses the host's page cache, e.g. <c>{"direct": true}</c> for O_DIRECT. Default: through the page cache.</param>
public sealed record CreateNodeRequest(
    [property: Required] string? Name,
    [property: Required] string? Driver,
    string? Path,
    string? Uri,
    CreateImageSpec? Create,
    bool? ReadOnly,
    bool? Tls,
    NodeCacheSpec? Cache = null);

/// <summary>Image creation parameters.</summary>
/// <param name="Size">Virtual size in bytes, a multiple of 512 (an integer, or a size such as 64M, 1G).</param>
/// <param name="ClusterSize">qcow2: the cluster size, a power of two from 512 to 2M (an integer, or a size such as 64K). Default 64K.</param>
/// <param name="Backing">qcow2: the backing image, a path relative to the image root like every node path; stored in the new image relative to its directory (QEMU's convention). Unallocated ranges read through to it.</param>
/// <param name="BackingFormat">qcow2: <c>raw</c> or <c>qcow2</c>, the backing image's format; found from the file when not given, and stored in the image either way.</param>
public sealed record CreateImageSpec(
    [property: Required, JsonConverter(typeof(ByteCountJsonConverter))] long? Size,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? ClusterSize = null,
    string? Backing = null,
    string? BackingFormat = null);

/// <summary>One image of a node's backing chain.</summary>
/// <param name="Path">The backing image, relative to the image root.</param>
/// <param name="Format"><c>raw</c> or <c>qcow2</c>.</param>
public sealed record BackingImageDto(string Path, string Format);

/// <summary>A node: an image the service owns.</summary>
/// <param name="Name">The node's name.</param>
/// <param name="Driver"><c>raw</c>, <c>qcow2</c> or <c>nbd</c>.</param>
/// <param name="Format">The image format: <c>raw</c> (also a block device), <c>qcow2</c>, or <c>nbd</c> for a remote export.</param>
/// <param name="Backing">The backing chain (qcow2), nearest first: what unallocated ranges read through to. Empty without one.</param>
/// <param name="Path">raw, qcow2: the image file relative to the image root, or a block device's absolute path as given; null for nbd.</param>
/// <param name="Uri">nbd: the export's URI (nbds:// or nbds+unix:// when TLS is used); null for raw and qcow2.</param>
/// <param name="Size">Virtual size in bytes.</param>
/// <param name="AllocatedBytes">Bytes the image occupies on disk (0 where unknown, e.g. nbd; the whole size for a block device).</param>
/// <param name="ReadOnly">Opened without write access.</param>
/// <param name="Busy">A job uses the node (as its device or target).</param>
/// <param name="JobId">The job using the node, or null.</param>
/// <param name="Bitmaps">Names of the node's dirty bitmaps.</param>
/// <param name="Exports">Names of the NBD exports serving the node.</param>
/// <param name="CreatedAt">When the node was added (UTC).</param>
/// <param name="ImageReplaced">
/// The node's path no longer names the file it has open (the file was renamed over or removed, or a
/// directory on the path became a symbolic link leading outside the image root): writes are refused
/// with <c>image-replaced</c> and its persistent bitmaps are inconsistent. Remove the node and add it again.
/// </param>
/// <param name="ImageReplacedReason">What was found; null while <c>imageReplaced</c> is false.</param>
/// <param name="Device">
/// The image is a host block device (driver raw, <c>path</c> absolute): its size is the device's,
/// every byte of it is data (allocation, block status), and <c>deleteImage</c> is refused.
/// </param>
/// <param name="Tls">nbd: the connection is TLS (the URI's scheme is nbds); false otherwise.</param>
/// <param name="PeerSubject">nbd over TLS: the subject of the server's certificate (e.g. <c>CN=host-b, O=Example</c>), as checked against the CA; null otherwise.</param>
/// <param name="Cache">How the image uses the host's page cache: <c>direct</c> when opened with O_DIRECT.</param>
public sealed record NodeDto(
    string Name,
    string Driver,
    string Format,
    IReadOnlyList<BackingImageDto> Backing,
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
    string? ImageReplacedReason,
    bool Device,
    bool Tls,
    string? PeerSubject,
    NodeCacheDto Cache);

/// <summary>Body of POST /api/v1/nodes/{node}/zero: a write of zeroes (it marks bitmaps).</summary>
/// <param name="Offset">First byte (an integer, or a size such as 1M).</param>
/// <param name="Length">Bytes to zero (an integer, or a size such as 64K).</param>
/// <param name="MayUnmap">The range may be deallocated (a hole) instead of written. Default true.</param>
public sealed record ZeroRequest(
    [property: Required, JsonConverter(typeof(ByteCountJsonConverter))] long? Offset,
    [property: Required, JsonConverter(typeof(ByteCountJsonConverter))] long? Length,
    bool? MayUnmap);

/// <summary>Body of POST /api/v1/nodes/{node}/discard: deallocate a range (it reads as zeroes on raw images; it marks bitmaps).</summary>
/// <param name="Offset">First byte (an integer, or a size such as 1M).</param>
/// <param name="Length">Bytes to discard (an integer, or a size such as 64K).</param>
public sealed record DiscardRequest(
    [property: Required, JsonConverter(typeof(ByteCountJsonConverter))] long? Offset,
    [property: Required, JsonConverter(typeof(ByteCountJsonConverter))] long? Length);

/// <summary>One allocation extent of a node.</summary>
/// <param name="Offset">First byte of the extent.</param>
/// <param name="Length">Bytes in the extent.</param>
/// <param name="Type"><c>data</c> (allocated), or <c>zero</c> (a hole or known zeroes).</param>
public sealed record AllocationExtentDto(long Offset, long Length, string Type);
