using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images;

/// <summary>The <c>uint64_t range[2]</c> of BLKDISCARD and BLKZEROOUT: first byte, then length in bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
internal readonly struct ByteRange(long start, long length)
{
    public readonly ulong Start = (ulong)start;

    public readonly ulong Length = (ulong)length;
}
