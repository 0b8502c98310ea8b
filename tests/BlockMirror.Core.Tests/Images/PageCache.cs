using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// What of a file the kernel holds in its page cache (mincore over a read-only mapping, which
/// faults nothing in), and dropping a file's clean pages (posix_fadvise DONTNEED, no root needed).
/// </summary>
internal static partial class PageCache
{
    private const int PageSize = 4096;
    private const int POSIX_FADV_DONTNEED = 4;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mincore(nint address, nuint length, [Out] byte[] vector);

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long length, int advice);

    /// <summary>Drops the file's pages from the page cache; they must be clean (written back) to go.</summary>
    public static void Evict(string path)
    {
        using var handle = File.OpenHandle(path);
        var error = posix_fadvise((int)handle.DangerousGetHandle(), 0, 0, POSIX_FADV_DONTNEED);
        if (error != 0)
            throw new IOException($"posix_fadvise(DONTNEED) of {path}: errno {error}");
    }

    /// <summary>One flag per 4 KiB page of the file: true where the page is in the page cache.</summary>
    public static bool[] Resident(string path)
    {
        var length = new FileInfo(path).Length;
        using var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
        var handle = view.SafeMemoryMappedViewHandle;
        var vector = new byte[(length + PageSize - 1) / PageSize];
        var added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            var address = handle.DangerousGetHandle() + (nint)view.PointerOffset;
            if (mincore(address, (nuint)length, vector) != 0)
                throw new IOException($"mincore of {path}: errno {Marshal.GetLastPInvokeError()}");
        }
        finally
        {
            if (added)
                handle.DangerousRelease();
        }
        return Array.ConvertAll(vector, v => (v & 1) != 0);
    }

    /// <summary>True when the file lies on ext2/ext3/ext4 (statfs f_type 0xEF53).</summary>
    public static bool OnExt4(string path) => StatFsType(path) == 0xEF53;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statfs(string path, byte* buffer);

    private static unsafe long StatFsType(string path)
    {
        var buffer = stackalloc byte[256];
        return statfs(path, buffer) == 0 ? *(long*)buffer : 0;
    }
}
