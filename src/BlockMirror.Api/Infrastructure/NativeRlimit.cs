using System.Runtime.InteropServices;

namespace BlockMirror.Api.Infrastructure;

/// <summary><c>struct rlimit</c> on 64-bit Linux: the soft and the hard limit (RLIM_INFINITY = all ones).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NativeRlimit
{
    public ulong Current;
    public ulong Maximum;
}
