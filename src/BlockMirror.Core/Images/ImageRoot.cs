using System.Text;

namespace BlockMirror.Core.Images;

/// <summary>
/// The directory every image path is relative to. Resolution refuses absolute paths,
/// <c>..</c> segments and symlinks whose target lies outside the root, so a client can
/// never name a file the operator did not put under the root.
/// </summary>
public sealed partial class ImageRoot
{
    /// <summary>NAME_MAX: the longest name of one directory entry, in bytes.</summary>
    private const int MaxNameBytes = 255;

    /// <summary>PATH_MAX: the longest path a system call takes, in bytes with its NUL.</summary>
    private const int MaxPathBytes = 4096;

    public ImageRoot(string fullPath)
    {
        FullPath = Path.TrimEndingDirectorySeparator(Path.GetFullPath(fullPath));
        Directory.CreateDirectory(FullPath);
        // The root itself may be a symlink (e.g. /tmp on some systems); compare against its real path.
        RealPath = RealPathOf(FullPath);
    }

    public string FullPath { get; }

    /// <summary>
    /// Whether an image file with more than one hard link may be opened (<c>Storage:AllowHardLinks</c>).
    /// Off by default: a hard link inside the root to a file outside it passes every path check
    /// (its name is inside), and needs no permission on the target's directory to make.
    /// </summary>
    public bool AllowHardLinks { get; init; }

    private string RealPath { get; }

    /// <summary>
    /// The host block devices a node may name by absolute path (<c>Storage:Devices</c>); none by default.
    /// Everything else a client names is a file under the root.
    /// </summary>
    public DeviceAllowList Devices { get; init; } = DeviceAllowList.None;

    /// <summary>Resolves a client-supplied relative path to an absolute path inside the root.</summary>
    public string Resolve(string? relative)
    {
        if (string.IsNullOrWhiteSpace(relative))
            throw Outside(relative ?? "", "the path is empty");
        if (relative.Contains('\0', StringComparison.Ordinal))
            throw Outside(relative, "the path contains a NUL character");
        if (Path.IsPathRooted(relative) || relative.StartsWith('~'))
            throw Outside(relative, "absolute paths are not allowed");
        var segments = relative.Split('/', '\\');
        if (segments.Any(s => s == ".."))
            throw Outside(relative, "'..' segments are not allowed");
        // The kernel's limits (NAME_MAX, PATH_MAX), checked before any system call meets them.
        if (segments.FirstOrDefault(s => Encoding.UTF8.GetByteCount(s) > MaxNameBytes) is { } longName)
            throw InvalidPath(relative, $"the name '{BlockErrors.Shorten(longName)}' is longer than {MaxNameBytes} bytes");
        if (segments.Length == 0 || segments[^1].Length == 0 || segments[^1] == ".")
            throw Outside(relative, "the path names a directory");

        var full = Path.GetFullPath(Path.Combine(FullPath, relative));
        if (!IsUnder(full, FullPath))
            throw Outside(relative, "it resolves outside the image root");
        if (Encoding.UTF8.GetByteCount(full) >= MaxPathBytes)
            throw InvalidPath(relative, $"the full path is longer than {MaxPathBytes - 1} bytes");

        // Follow symlinks on every existing component: the deepest existing ancestor (or the file) must
        // really live under the root.
        var probe = full;
        while (!File.Exists(probe) && !Directory.Exists(probe) && !IsSymlink(probe))
        {
            var parent = Path.GetDirectoryName(probe);
            if (parent is null || parent == probe)
                break;
            probe = parent;
        }
        string real;
        try
        {
            real = RealPathOf(probe);
        }
        catch (IOException)
        {
            throw Outside(relative, "a symbolic link on the path cannot be resolved");
        }
        if (real != RealPath && !IsUnder(real, RealPath))
            throw Outside(relative, "a symbolic link leads outside the image root");
        return full;
    }

    /// <summary>The path relative to the root, with '/' separators, as the API reports it.</summary>
    public string ToRelative(string full) => Path.GetRelativePath(FullPath, full).Replace('\\', '/');

    private static bool IsSymlink(string path)
    {
        try
        {
            return new FileInfo(path).LinkTarget is not null;
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>realpath(3) of <paramref name="path"/>; <see cref="IOException"/> (HResult = errno) when it cannot be resolved.</summary>
    internal static string RealPathOf(string path)
    {
        // realpath(3) resolves every component, including symlinks in the middle of a link's target.
        var resolved = realpath(path, IntPtr.Zero);
        if (resolved == IntPtr.Zero)
        {
            var errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            throw new IOException($"Cannot resolve '{path}' (errno {errno})", errno);
        }
        try
        {
            return System.Runtime.InteropServices.Marshal.PtrToStringUTF8(resolved)!;
        }
        finally
        {
            free(resolved);
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial IntPtr realpath(string path, IntPtr resolved);

    [System.Runtime.InteropServices.LibraryImport("libc")]
    private static partial void free(IntPtr ptr);

    private static bool IsUnder(string path, string root) =>
        path.Length > root.Length + 1
        && path.StartsWith(root, StringComparison.Ordinal)
        && path[root.Length] == Path.DirectorySeparatorChar;

    private static BlockException Outside(string path, string why) =>
        BlockErrors.Invalid("path-outside-root", $"Path '{BlockErrors.Shorten(path)}' is not allowed: {why}");

    private static BlockException InvalidPath(string path, string why) =>
        BlockErrors.Invalid("invalid-path", $"Path '{BlockErrors.Shorten(path)}' is not valid: {why}");
}
