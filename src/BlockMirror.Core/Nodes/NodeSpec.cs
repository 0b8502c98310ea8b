using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>What a client asks for when it adds a node (POST /nodes); <paramref name="CacheDirect"/> is QEMU's cache.direct.</summary>
public sealed record NodeSpec(string Name, string Driver, string? Path, string? Uri, long? CreateSize, bool ReadOnly,
    ImageCreateOptions? CreateOptions = null, bool CacheDirect = false);
