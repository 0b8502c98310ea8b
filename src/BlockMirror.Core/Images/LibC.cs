using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// The few Linux libc calls .NET does not expose: sparse-file navigation, hole punching,
/// OFD locks, data sync, st_blocks, reads that do not wait (preadv2) and copy_file_range. Linux only (x86_64 and arm64 share
/// every layout used here). "libc" resolves to libc.so.6: the runtime maps that name itself.
/// </summary>
internal static partial class LibC
{
    // lseek whence values for sparse files (Linux ≥ 3.1).
    internal const int SEEK_DATA = 3;
    internal const int SEEK_HOLE = 4;

    // fallocate modes.
    internal const int FALLOC_FL_KEEP_SIZE = 0x01;
    internal const int FALLOC_FL_PUNCH_HOLE = 0x02;
    internal const int FALLOC_FL_ZERO_RANGE = 0x10;

    // Open-file-description locks (Linux ≥ 3.15): owned by the open file, not the process,
    // so two opens in one process conflict, and closing the handle releases them.
    internal const int F_OFD_GETLK = 36;
    internal const int F_OFD_SETLK = 37;
    internal const short F_RDLCK = 0;
    internal const short F_WRLCK = 1;
    internal const short F_UNLCK = 2;
    internal const short SEEK_SET = 0;

    // open(2) flags (asm-generic values, shared by x86_64 and arm64; O_DIRECTORY and O_NOFOLLOW
    // differ between them and are not used).
    internal const int O_RDONLY = 0;
    internal const int O_RDWR = 2;
    internal const int O_CREAT = 0x40;
    internal const int O_EXCL = 0x80;
    internal const int O_NOCTTY = 0x100;
    internal const int O_NONBLOCK = 0x800;
    internal const int O_CLOEXEC = 0x80000;

    /// <summary>
    /// O_DIRECT: the one open flag whose value differs between the two architectures (x86_64 040000,
    /// arm64 0200000, where 040000 is O_DIRECTORY). Set with F_SETFL after the open, never passed to open(2).
    /// </summary>
    internal static readonly int O_DIRECT = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x10000 : 0x4000;

    // statx(2) (Linux ≥ 4.11; STATX_DIOALIGN ≥ 6.1): the file's O_DIRECT alignment.
    internal const int AT_EMPTY_PATH = 0x1000;
    internal const uint STATX_DIOALIGN = 0x2000;

    // fcntl commands for the file status flags.
    internal const int F_GETFL = 3;
    internal const int F_SETFL = 4;

    // errno values (asm-generic, shared by x86_64 and arm64).
    internal const int EPERM = 1;
    internal const int ENOENT = 2;
    internal const int EINTR = 4;
    internal const int ENXIO = 6;
    internal const int EBADF = 9;
    internal const int EAGAIN = 11;
    internal const int EBUSY = 16;
    internal const int EACCES = 13;
    internal const int EEXIST = 17;
    internal const int EXDEV = 18;
    internal const int ENODEV = 19;
    internal const int ENOTDIR = 20;
    internal const int EISDIR = 21;
    internal const int EINVAL = 22;
    internal const int ENOTTY = 25;
    internal const int EFBIG = 27;
    internal const int ENOSPC = 28;
    internal const int EROFS = 30;
    internal const int ENAMETOOLONG = 36;
    internal const int ENOSYS = 38;
    internal const int ELOOP = 40;
    internal const int EOPNOTSUPP = 95;

    // Block device ioctls (linux/fs.h; _IO/_IOR encodings shared by x86_64 and arm64). Ranges are
    // byte offsets and lengths, which must be multiples of the logical block size (BLKSSZGET).
    internal const uint BLKROGET = 0x125E;        // _IO(0x12, 94): int, non-zero when the device is read-only
    internal const uint BLKSSZGET = 0x1268;       // _IO(0x12, 104): int, the logical block size
    internal const uint BLKDISCARD = 0x1277;      // _IO(0x12, 119): uint64_t[2] {start, length}
    internal const uint BLKZEROOUT = 0x127F;      // _IO(0x12, 127): uint64_t[2] {start, length}
    internal const uint BLKGETSIZE64 = 0x80081272; // _IOR(0x12, 114, size_t): uint64_t, the size in bytes

    // fnmatch(3) flags: '*' and '?' never match '/', a leading '.' of a name only explicitly.
    internal const int FNM_PATHNAME = 1 << 0;
    internal const int FNM_PERIOD = 1 << 2;

    [LibraryImport("libc", SetLastError = true)]
    internal static partial long lseek(int fd, long offset, int whence);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fallocate(int fd, int mode, long offset, long len);

    // fcntl is variadic; on x86_64 and arm64 a pointer third argument is passed exactly as in a
    // non-variadic call, so binding the F_OFD_* form with a fixed signature is safe.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int fcntl(int fd, int cmd, ref Flock lk);

    // fcntl with an int argument (F_GETFL / F_SETFL); see above for why a fixed signature is safe.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int fcntl(int fd, int cmd, int arg);

    // open is variadic too; the mode is passed the same way as a fixed third argument on x86_64 and arm64 Linux.
    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int open(string path, int flags, uint mode);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int ftruncate(int fd, long length);

    // ioctl is variadic; a pointer third argument is passed as in a fixed call on x86_64 and arm64.
    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int ioctl(int fd, nuint request, out ulong value);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int ioctl(int fd, nuint request, out int value);

    /// <summary>ioctl with a <c>uint64_t[2]</c> range (BLKDISCARD, BLKZEROOUT).</summary>
    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int ioctl(int fd, nuint request, in ByteRange range);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int fnmatch(string pattern, string name, int flags);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fsync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fdatasync(int fd);

    // glibc exports fstat as a real symbol since 2.33 (Debian 12 has 2.36); older glibc only had __fxstat.
    [LibraryImport("libc", SetLastError = true)]
    internal static partial int fstat(int fd, out StatBuffer buf);

    /// <summary>statx(2) into a raw 256-byte struct statx; <see cref="DirectIoAlignment"/> reads the two fields it needs.</summary>
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    // preadv2 flag (Linux ≥ 4.14): fail with EAGAIN instead of waiting for the device.
    internal const int RWF_NOWAIT = 0x08;

    [LibraryImport("libc", SetLastError = true)]
    internal static unsafe partial nint preadv2(int fd, IoVector* iov, int iovcnt, long offset, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint copy_file_range(int fdIn, ref long offIn, int fdOut, ref long offOut, nuint len, uint flags);

    /// <summary>
    /// copy_file_range(2), the one call site of the syscall: the bytes copied (0 at the source's
    /// end of file), or -1 with <paramref name="errno"/> set. A non-zero <paramref name="injectErrno"/>
    /// (tests only) makes this call fail with that errno instead of calling the kernel, so the caller's
    /// handling of a refusal is the code that runs for a real one.
    /// </summary>
    internal static nint CopyFileRange(int fdIn, ref long offIn, int fdOut, ref long offOut, nuint len, int injectErrno, out int errno)
    {
        if (injectErrno != 0)
        {
            errno = injectErrno;
            return -1;
        }
        var n = copy_file_range(fdIn, ref offIn, fdOut, ref offOut, len, 0);
        errno = n < 0 ? LastErrno : 0;
        return n;
    }

    // posix_fadvise advice: read the range into the page cache now, without waiting for it.
    internal const int POSIX_FADV_WILLNEED = 3;

    // Returns the error number itself (0 on success); errno is not set.
    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);

    /// <summary>
    /// posix_fadvise(2) WILLNEED over [offset, +length): the kernel queues the reads of exactly
    /// that range (no readahead window around it) and returns; 0, or the error number.
    /// </summary>
    internal static int Prefetch(SafeFileHandle handle, long offset, long length)
    {
        using var lease = new FileDescriptorLease(handle);
        return posix_fadvise(lease.Fd, offset, length, POSIX_FADV_WILLNEED);
    }

    // statfs f_type of the ext2/ext3/ext4 family (linux/magic.h EXT4_SUPER_MAGIC).
    internal const long EXT4_SUPER_MAGIC = 0xEF53;

    // struct statfs is 120 bytes on x86_64 and arm64; f_type (__fsword_t, a long there) comes first.
    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int fstatfs(int fd, byte* buffer);

    /// <summary>The f_type of the file system holding the open file (fstatfs), or 0 when it cannot be told.</summary>
    internal static unsafe long FileSystemType(SafeFileHandle handle)
    {
        using var lease = new FileDescriptorLease(handle);
        var buffer = stackalloc byte[256];
        return fstatfs(lease.Fd, buffer) == 0 ? *(long*)buffer : 0;
    }

    // sync_file_range flag: start writeback of the range's dirty pages, do not wait for it.
    internal const uint SYNC_FILE_RANGE_WRITE = 2;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sync_file_range(int fd, long offset, long nbytes, uint flags);

    /// <summary>
    /// sync_file_range(2) with SYNC_FILE_RANGE_WRITE over [offset, +length): 0, or the errno. A non-zero <paramref name="injectErrno"/> (tests only) is returned instead of calling the kernel.
    /// </summary>
    internal static int StartWriteback(SafeFileHandle handle, long offset, long length, int injectErrno)
    {
        if (injectErrno != 0)
            return injectErrno;
        using var lease = new FileDescriptorLease(handle);
        while (sync_file_range(lease.Fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0)
        {
            var errno = LastErrno;
            if (errno != EINTR)
                return errno;
        }
        return 0;
    }

    /// <summary>
    /// fdatasync(2) of <paramref name="handle"/>, retried when a signal interrupts it (EINTR is no
    /// failure); any other errno throws an <see cref="ErrnoException"/>. The one data sync of images
    /// and of the bitmap journal alike.
    /// </summary>
    internal static void FDataSync(SafeFileHandle handle, string path)
    {
        using var lease = new FileDescriptorLease(handle);
        while (fdatasync(lease.Fd) != 0)
        {
            var errno = LastErrno;
            if (errno != EINTR)
                throw ErrnoException(errno, path, "fdatasync");
        }
    }

    /// <summary>errno of the last call made through this class (SetLastError = true).</summary>
    internal static int LastErrno => Marshal.GetLastPInvokeError();

    /// <summary>
    /// An exception shaped like the ones .NET itself throws for a failed syscall on Unix:
    /// IOException, message "strerror : 'path'", HResult = errno (so ENOSPC is 28, as from RandomAccess.Write).
    /// </summary>
    internal static IOException ErrnoException(int errno, string path, string? operation = null)
    {
        var text = Marshal.GetPInvokeErrorMessage(errno);
        var message = operation is null ? $"{text} : '{path}'" : $"{operation}: {text} : '{path}'";
        return new IOException(message, errno);
    }
}
