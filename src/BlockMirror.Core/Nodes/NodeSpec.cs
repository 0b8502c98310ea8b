using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>What a client asks for when it adds a node (POST /nodes).</summary>
public sealed record NodeSpec(string Name, string Driver, string? Path, string? Uri, long? CreateSize, bool ReadOnly,
    ImageCreateOptions? CreateOptions = null);
