namespace BlockMirror.Api.Contracts;

/// <summary>How a node's image uses the host's page cache.</summary>
/// <param name="Direct">The image is open with O_DIRECT (<c>cache.direct</c>): its I/O bypasses the host's page cache.</param>
public sealed record NodeCacheDto(bool Direct);
