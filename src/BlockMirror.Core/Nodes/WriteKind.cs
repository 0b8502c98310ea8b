namespace BlockMirror.Core.Nodes;

/// <summary>The kinds of request that change a node's content (and so dirty its bitmaps).</summary>
public enum WriteKind
{
    Write,
    WriteZeroes,
    Discard,

    /// <summary>A range copied from another image by the storage itself (a job's copy offload; owner writes only).</summary>
    CopyRange,
}
