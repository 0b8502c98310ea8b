using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images;

/// <summary>
/// <c>struct stat</c> as fstat(2) fills it on Linux x86_64 (144 bytes). Only the fields we read
/// are declared. st_dev, st_ino, st_size, st_blocks and st_mtim sit at the same offsets on the
/// generic layout (arm64, riscv64: 128 bytes, so the larger buffer is safe there too); st_mode and
/// st_nlink do not (x86_64: nlink 8 bytes at 16, mode at 24; generic: mode at 16, nlink 4 bytes at
/// 20), so they are read through <see cref="Mode"/> and <see cref="LinkCount"/>.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 144)]
internal struct StatBuffer
{
    // S_IFMT and the file types (octal 0170000 ...), the same on every Linux architecture.
    internal const uint TypeMask = 0xF000;
    internal const uint RegularFile = 0x8000;
    internal const uint Directory = 0x4000;
    internal const uint BlockDevice = 0x6000;
    internal const uint CharacterDevice = 0x2000;
    internal const uint Fifo = 0x1000;
    internal const uint Socket = 0xC000;

    /// <summary>The unit of <see cref="Blocks"/>: st_blocks counts 512-byte blocks whatever the file system's block size.</summary>
    internal const long BlockUnit = 512;

    private static readonly bool s_x64 = RuntimeInformation.ProcessArchitecture == Architecture.X64;

    /// <summary>st_dev.</summary>
    [FieldOffset(0)]
    public ulong Device;

    /// <summary>st_ino.</summary>
    [FieldOffset(8)]
    public ulong Inode;

    [FieldOffset(16)]
    private uint _word16;

    [FieldOffset(20)]
    private uint _word20;

    [FieldOffset(24)]
    private uint _word24;

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

    /// <summary>st_mode: file type and permission bits.</summary>
    public readonly uint Mode => s_x64 ? _word24 : _word16;

    /// <summary>st_nlink: how many directory entries name the file (0 once it was unlinked).</summary>
    public readonly ulong LinkCount => s_x64 ? _word16 | ((ulong)_word20 << 32) : _word20;

    /// <summary>The file type bits of <see cref="Mode"/> (one of the constants above).</summary>
    public readonly uint FileType => Mode & TypeMask;
}
