namespace BlockMirror.Core.Nodes;

/// <summary>The kinds of request that change a node's content (and so dirty its bitmaps).</summary>
public enum WriteKind
{
    Write,
    WriteZeroes,
    Discard,
}
