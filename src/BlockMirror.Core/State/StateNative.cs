using System.Runtime.InteropServices;
using BlockMirror.Core.Images;

namespace BlockMirror.Core.State;

/// <summary>
/// libc calls the journal needs beyond <see cref="LibC"/>: stat by path (an image's identity without
/// opening it, which would meet its lock) and open/close, to fsync a directory after a segment was
/// created or deleted (.NET cannot open a directory).
/// </summary>
internal static partial class StateNative
{
    // glibc exports stat as a real symbol since 2.33, as fstat (see LibC).
    [LibraryImport("libc", EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int stat(string path, out StatBuffer buf);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int close(int fd);

    /// <summary>Makes a directory's entries (files created, renamed or deleted in it) durable.</summary>
    internal static void FsyncDirectory(string path)
    {
        // O_RDONLY (0) opens a directory on every Linux architecture; O_DIRECTORY's value differs between them.
        var fd = open(path, 0);
        if (fd < 0)
            throw LibC.ErrnoException(LibC.LastErrno, path, "open");
        try
        {
            if (LibC.fsync(fd) != 0)
                throw LibC.ErrnoException(LibC.LastErrno, path, "fsync");
        }
        finally
        {
            close(fd);
        }
    }
}
