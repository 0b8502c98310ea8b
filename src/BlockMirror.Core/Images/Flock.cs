using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images;

/// <summary>
/// <c>struct flock</c> as Linux x86_64/arm64 lay it out (32 bytes): l_type, l_whence, then
/// 8-byte aligned l_start and l_len, then l_pid. Sequential layout gives the same padding.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Flock
{
    /// <summary>l_type: F_RDLCK, F_WRLCK or F_UNLCK.</summary>
    public short Type;

    /// <summary>l_whence: SEEK_SET for absolute byte offsets.</summary>
    public short Whence;

    /// <summary>l_start: first locked byte.</summary>
    public long Start;

    /// <summary>l_len: number of bytes (0 = to EOF and beyond).</summary>
    public long Length;

    /// <summary>l_pid: must be 0 for OFD locks; F_OFD_GETLK reports -1 for a conflicting OFD lock.</summary>
    public int Pid;
}
