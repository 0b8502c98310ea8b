using System.Globalization;
using System.Text;
using Microsoft.Data.Sqlite;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Makes one process the owner of a database and the files beside it (the bitmap journal): an
/// exclusive lock on <c>&lt;database file&gt;.lock</c>, taken before anything reads or writes them
/// (before migrations, before the journal's recovery) and held until the host is disposed. Without
/// it a second instance on the same folder migrates, checkpoints, folds and deletes the journal
/// under the live one, whose acknowledged writes then vanish from its persistent bitmaps. The file
/// holds the owner's pid, so the refusal can say who holds it; it is never deleted (a process that
/// opened the old file could otherwise lock a name nobody else sees).
/// </summary>
public sealed class DataDirectoryLock : IDisposable
{
    private readonly Lock _handleLock = new();
    private SafeFileHandle? _handle;

    /// <param name="databasePath">The SQLite file, or null for a database in memory (nothing to own).</param>
    public DataDirectoryLock(string? databasePath)
    {
        LockPath = databasePath is null ? null : databasePath + ".lock";
    }

    /// <summary>The lock file, or null when the database lives in memory.</summary>
    public string? LockPath { get; }

    /// <summary>Whether this process holds the lock (acquired and not yet released).</summary>
    public bool Held
    {
        get
        {
            lock (_handleLock)
                return _handle is not null;
        }
    }

    /// <summary>
    /// The database file of a SQLite connection string (already resolved to an absolute path), or
    /// null for a database in memory.
    /// </summary>
    public static string? DatabaseFile(string connectionString)
    {
        var csb = new SqliteConnectionStringBuilder(connectionString);
        if (string.IsNullOrEmpty(csb.DataSource) || csb.DataSource == ":memory:" || csb.Mode == SqliteOpenMode.Memory)
            return null;
        return Path.GetFullPath(csb.DataSource);
    }

    /// <summary>Takes the lock, or throws a <see cref="StartupRefusedException"/> (<see cref="ExitCodes.InUse"/>) naming the holder. Idempotent.</summary>
    public void Acquire()
    {
        lock (_handleLock)
        {
            if (LockPath is null || _handle is not null)
                return;
            var folder = Path.GetDirectoryName(LockPath)!;
            Directory.CreateDirectory(folder);
            SafeFileHandle handle;
            try
            {
                // Not truncated: while another process holds the lock its pid is the content.
                handle = File.OpenHandle(LockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite,
                    OperatingSystem.IsLinux() ? FileShare.ReadWrite : FileShare.None);
            }
            catch (IOException) when (!OperatingSystem.IsLinux())
            {
                // Elsewhere FileShare.None is the lock (.NET takes flock(LOCK_EX) or a sharing lock).
                throw InUse(folder, holder: null);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new StartupRefusedException(ExitCodes.Configuration, $"cannot open the lock file {LockPath}: {e.Message}", e);
            }
            try
            {
                if (OperatingSystem.IsLinux() && !TryLock(handle))
                    throw InUse(folder, ReadHolder(handle));
                var pid = Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
                RandomAccess.SetLength(handle, 0);
                RandomAccess.Write(handle, pid, 0);
            }
            catch
            {
                handle.Dispose();
                throw;
            }
            _handle = handle;
        }
    }

    /// <summary>Releases the lock (closing the descriptor drops it). The next instance may start.</summary>
    public void Dispose()
    {
        lock (_handleLock)
        {
            _handle?.Dispose();
            _handle = null;
        }
    }

    private bool TryLock(SafeFileHandle handle)
    {
        var add = false;
        handle.DangerousAddRef(ref add);
        try
        {
            var fd = (int)handle.DangerousGetHandle();
            var lk = new NativeFlock { Type = HostNative.F_WRLCK, Whence = HostNative.SEEK_SET, Start = 0, Length = 0 };
            while (HostNative.fcntl(fd, HostNative.F_OFD_SETLK, ref lk) != 0)
            {
                var errno = HostNative.LastErrno;
                if (errno == HostNative.EINTR)
                    continue;
                if (errno is HostNative.EAGAIN or HostNative.EACCES)
                    return false;
                throw new StartupRefusedException(ExitCodes.Configuration, $"cannot lock {LockPath}: {HostNative.ErrorText(errno)}");
            }
            return true;
        }
        finally
        {
            if (add)
                handle.DangerousRelease();
        }
    }

    /// <summary>The holder's pid as it wrote it, or null (it may not have written it yet).</summary>
    private static int? ReadHolder(SafeFileHandle handle)
    {
        var buffer = new byte[32];
        var read = RandomAccess.Read(handle, buffer, 0);
        return int.TryParse(Encoding.ASCII.GetString(buffer, 0, read).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : null;
    }

    private StartupRefusedException InUse(string folder, int? holder) => new(ExitCodes.InUse,
        $"the data folder {folder} is in use by another BlockMirror process ({(holder is { } pid ? $"pid {pid}" : "pid unknown")}, lock file {LockPath}): " +
        "stop it first, or give this instance its own ConnectionStrings:BlockMirror");
}
