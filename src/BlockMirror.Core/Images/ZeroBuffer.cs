namespace BlockMirror.Core.Images;

/// <summary>
/// One shared 1 MiB block of zeroes for the write-zeroes fallback (and anyone else who must write
/// zeroes): never written to, so it can be shared by every concurrent writer without pooling.
/// </summary>
internal static class ZeroBuffer
{
    internal const int Length = 1 << 20;

    private static readonly byte[] s_zeroes = new byte[Length];

    /// <summary>The zeroes, read-only so no caller can dirty them.</summary>
    internal static ReadOnlyMemory<byte> Memory => s_zeroes;
}
