using System.Runtime.InteropServices;

namespace BlockMirror.Api.Infrastructure;

/// <summary><c>struct flock</c> as Linux x86_64/arm64 lay it out (32 bytes): l_type, l_whence, l_start, l_len, l_pid.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NativeFlock
{
    public short Type;
    public short Whence;
    public long Start;

    /// <summary>0 = to the end of the file and beyond: the whole file.</summary>
    public long Length;

    /// <summary>Must be 0 for OFD locks.</summary>
    public int Pid;
}
