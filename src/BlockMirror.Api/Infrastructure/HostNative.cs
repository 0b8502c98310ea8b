using System.Runtime.InteropServices;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The libc calls the host needs and .NET does not expose: an open-file-description lock on the
/// data folder's lock file, and the descriptor limit. Linux only (x86_64 and arm64 share every
/// layout used here); callers check <see cref="OperatingSystem.IsLinux"/>.
/// </summary>
internal static partial class HostNative
{
    // Open-file-description locks (Linux ≥ 3.15): owned by the open file, not the process, so a
    // second open in the same process conflicts like another process (two test hosts in one
    // process), closing the handle releases them, and they do not mix with the flock(2) .NET
    // itself takes on files it opens.
    internal const int F_OFD_SETLK = 37;
    internal const short F_WRLCK = 1;
    internal const short SEEK_SET = 0;

    internal const int RLIMIT_NOFILE = 7;

    internal const int EINTR = 4;
    internal const int EAGAIN = 11;
    internal const int EACCES = 13;

    // fcntl is variadic; on x86_64 and arm64 a pointer third argument is passed exactly as in a
    // non-variadic call, so binding the F_OFD_* form with a fixed signature is safe.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int fcntl(int fd, int cmd, ref NativeFlock lk);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int getrlimit(int resource, out NativeRlimit limit);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int setrlimit(int resource, in NativeRlimit limit);

    internal static int LastErrno => Marshal.GetLastPInvokeError();

    internal static string ErrorText(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
