using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The few calls of the system's libzstd (Debian's libzstd1, which qemu-utils itself depends on) that
/// reading zstd-compressed qcow2 clusters needs. Bound lazily: a machine without the library refuses
/// zstd images at open with a clear error instead of failing to load this assembly.
/// </summary>
internal static unsafe partial class LibZstd
{
    private const string Library = "libzstd.so.1";

    private static readonly Lazy<bool> s_available = new(() => NativeLibrary.TryLoad(Library, out _));

    public static bool IsAvailable => s_available.Value;

    [StructLayout(LayoutKind.Sequential)]
    internal struct InBuffer
    {
        public byte* Src;
        public nuint Size;
        public nuint Pos;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct OutBuffer
    {
        public byte* Dst;
        public nuint Size;
        public nuint Pos;
    }

    [LibraryImport(Library, EntryPoint = "ZSTD_createDCtx")]
    internal static partial nint CreateDCtx();

    [LibraryImport(Library, EntryPoint = "ZSTD_freeDCtx")]
    internal static partial nuint FreeDCtx(nint dctx);

    [LibraryImport(Library, EntryPoint = "ZSTD_decompressStream")]
    internal static partial nuint DecompressStream(nint dctx, OutBuffer* output, InBuffer* input);

    [LibraryImport(Library, EntryPoint = "ZSTD_isError")]
    internal static partial uint IsError(nuint code);
}
