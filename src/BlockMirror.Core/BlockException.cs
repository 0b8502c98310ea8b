namespace BlockMirror.Core;

/// <summary>
/// A refusal of the block layer: a stable machine-readable <see cref="Code"/> (the API's
/// problem code, e.g. <c>bitmap-busy</c>), a kind, and a human sentence in QEMU's wording.
/// </summary>
public sealed class BlockException : Exception
{
    public BlockException(BlockErrorKind kind, string code, string message, Exception? inner = null)
        : base(message, inner)
    {
        Kind = kind;
        Code = code;
    }

    public BlockErrorKind Kind { get; }

    public string Code { get; }
}
