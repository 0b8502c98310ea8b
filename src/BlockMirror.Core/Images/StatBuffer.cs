using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images;

/// <summary>
/// <c>struct stat</c> as fstat(2) fills it on Linux x86_64 (144 bytes). Only the fields we read
/// are declared; their offsets are the same on arm64's generic layout (which is 128 bytes, so the
/// larger buffer is safe there too).
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 144)]
internal struct StatBuffer
{
    /// <summary>st_ino.</summary>
    [FieldOffset(8)]
    public ulong Inode;

    /// <summary>st_size: the file's length in bytes.</summary>
    [FieldOffset(48)]
    public long Size;

    /// <summary>st_blocks: allocated 512-byte units (always 512, whatever the fs block size).</summary>
    [FieldOffset(64)]
    public long Blocks;

    /// <summary>st_mtim.tv_sec.</summary>
    [FieldOffset(88)]
    public long ModifiedSeconds;

    /// <summary>st_mtim.tv_nsec.</summary>
    [FieldOffset(96)]
    public long ModifiedNanoseconds;
}
