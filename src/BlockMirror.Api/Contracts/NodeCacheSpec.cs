namespace BlockMirror.Api.Contracts;

/// <summary>How a node's image uses the host's page cache (QEMU's <c>cache</c> options of a node).</summary>
/// <param name="Direct">
/// raw (a file or a block device): open the image with O_DIRECT, bypassing the host's page cache
/// (QEMU's <c>cache.direct=on</c>). Requests that are not aligned to the device's logical block are
/// widened to whole blocks (a read-modify-write for writes). Refused with <c>direct-io-unsupported</c>
/// on a file system without O_DIRECT. Default false.
/// </param>
public sealed record NodeCacheSpec(bool? Direct);
