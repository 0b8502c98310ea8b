using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// QEMU file-posix's image locking, byte for byte, so that we and real QEMU tools
/// (qemu-img, qemu-storage-daemon, a VM) refuse each other exactly as two QEMUs would.
/// Permission bit <c>i</c> held by an opener = a shared OFD lock on byte <c>100 + i</c>;
/// permission bit <c>i</c> the opener refuses to share = a shared OFD lock on byte <c>200 + i</c>.
/// An opener first takes its bytes, then tests (F_OFD_GETLK, exclusive) byte <c>200 + i</c> for
/// each permission it wants (someone refuses to share it) and byte <c>100 + i</c> for each it will
/// not share (someone holds it). Taking before testing means two racing openers both fail rather
/// than both succeed. The locks are per open file description: a second open in this process
/// conflicts like another process would, and closing the handle drops them.
/// </summary>
internal static class ImageLock
{
    private const int PermBase = 100;
    private const int SharedBase = 200;

    // QEMU's BlockPermission bits (include/block/block-common.h).
    private const int ConsistentRead = 1 << 0;
    private const int Write = 1 << 1;
    private const int WriteUnchanged = 1 << 2;
    private const int Resize = 1 << 3;
    private const int PermissionCount = 4;

    private static readonly string[] s_names = ["consistent read", "write", "write unchanged", "resize"];

    /// <summary>
    /// Takes the lock bytes for a read-write or read-only opener, or throws <c>image-locked</c>
    /// (Conflict) with QEMU's sentence. Callers close the handle on failure, which drops any byte taken.
    /// </summary>
    internal static void Acquire(SafeFileHandle handle, bool readOnly, string path)
    {
        // Like a QEMU block node with a writer attached (e.g. an export or a mirror target): it reads,
        // writes, and shares reads but not writes or resizes. A reader still refuses to share writes,
        // which is what makes `qemu-img info` say 'Failed to get shared "write" lock' on a busy image.
        var perm = readOnly ? ConsistentRead : ConsistentRead | Write | WriteUnchanged;
        var unshared = Write | Resize;

        using var lease = new FileDescriptorLease(handle);
        for (var i = 0; i < PermissionCount; i++)
        {
            if ((perm & (1 << i)) != 0)
                Lock(lease.Fd, PermBase + i, path);
        }
        for (var i = 0; i < PermissionCount; i++)
        {
            if ((unshared & (1 << i)) != 0)
                Lock(lease.Fd, SharedBase + i, path);
        }

        for (var i = 0; i < PermissionCount; i++)
        {
            if ((perm & (1 << i)) != 0 && IsHeldByOther(lease.Fd, SharedBase + i, path))
                throw Locked($"Failed to get \"{s_names[i]}\" lock", path);
        }
        for (var i = 0; i < PermissionCount; i++)
        {
            if ((unshared & (1 << i)) != 0 && IsHeldByOther(lease.Fd, PermBase + i, path))
                throw Locked($"Failed to get shared \"{s_names[i]}\" lock", path);
        }
    }

    private static void Lock(int fd, int offset, string path)
    {
        var lk = new Flock { Type = LibC.F_RDLCK, Whence = LibC.SEEK_SET, Start = offset, Length = 1 };
        while (LibC.fcntl(fd, LibC.F_OFD_SETLK, ref lk) != 0)
        {
            var errno = LibC.LastErrno;
            if (errno == LibC.EINTR)
                continue;
            // Someone holds the byte exclusively (QEMU never does, but another tool might).
            if (errno is LibC.EAGAIN or LibC.EACCES)
                throw Locked($"Failed to lock byte {offset}", path);
            throw LibC.ErrnoException(errno, path, $"Failed to lock byte {offset}");
        }
    }

    private static bool IsHeldByOther(int fd, int offset, string path)
    {
        // F_OFD_GETLK ignores our own open file description's locks, so this sees only others.
        var lk = new Flock { Type = LibC.F_WRLCK, Whence = LibC.SEEK_SET, Start = offset, Length = 1 };
        while (LibC.fcntl(fd, LibC.F_OFD_GETLK, ref lk) != 0)
        {
            var errno = LibC.LastErrno;
            if (errno != LibC.EINTR)
                throw LibC.ErrnoException(errno, path, $"Failed to test lock byte {offset}");
        }
        return lk.Type != LibC.F_UNLCK;
    }

    private static BlockException Locked(string what, string path) =>
        new(BlockErrorKind.Conflict, "image-locked", $"{what}: Is another process using the image [{path}]?");
}
