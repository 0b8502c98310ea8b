namespace BlockMirror.Core.Images;

/// <summary>
/// Which host block devices a node may name (<c>Storage:Devices</c>): absolute paths or glob
/// patterns (fnmatch(3) with FNM_PATHNAME: <c>*</c>, <c>?</c> and <c>[...]</c> never match a '/').
/// A node path is a device path when it is absolute; every other path is a file under the image
/// root (<see cref="ImageRoot.Resolve"/>).
/// </summary>
/// <remarks>
/// A device is allowed when the path as given AND the path it resolves to (realpath: every
/// symbolic link followed) both match a pattern, the same or another. So a stable name
/// (<c>/dev/disk/by-id/wwn-…</c>, <c>/dev/vg0/data</c>) is allowed by listing it and the device
/// it leads to (<c>/dev/sdb</c>, <c>/dev/dm-*</c>), and a symbolic link in an allowed place that
/// leads to a device nobody listed is refused: whoever can make a link there cannot reach more
/// than the list names.
/// </remarks>
public sealed class DeviceAllowList
{
    private readonly string[] _patterns;

    public DeviceAllowList(IEnumerable<string> patterns)
    {
        _patterns = [.. patterns];
        foreach (var pattern in _patterns)
        {
            // Checked at startup: a relative pattern would match nothing a client may give.
            if (string.IsNullOrWhiteSpace(pattern) || pattern[0] != '/' || pattern.Contains('\0', StringComparison.Ordinal))
                throw new ArgumentException($"Storage:Devices: '{pattern}' is not an absolute path or pattern (e.g. /dev/vg0/*)", nameof(patterns));
        }
    }

    /// <summary>No device is allowed (the default).</summary>
    public static DeviceAllowList None { get; } = new([]);

    /// <summary>The patterns, as configured.</summary>
    public IReadOnlyList<string> Patterns => _patterns;

    /// <summary>Whether <paramref name="path"/> names a host device rather than a file under the root: it is absolute.</summary>
    public static bool NamesDevice(string? path) => path is { Length: > 0 } && path[0] == '/';

    /// <summary>Whether a pattern matches <paramref name="path"/> itself (no symbolic link followed).</summary>
    public bool Matches(string path) =>
        _patterns.Any(p => LibC.fnmatch(p, path, LibC.FNM_PATHNAME | LibC.FNM_PERIOD) == 0);

    /// <summary>
    /// The real path of the allowed device <paramref name="path"/> names (what is then opened), or
    /// <c>device-not-allowed</c> when the path as given or where it leads is not matched, or
    /// <c>image-not-found</c> when it leads nowhere.
    /// </summary>
    public string Resolve(string path)
    {
        if (path.Contains('\0', StringComparison.Ordinal) || Path.GetFullPath(path) != path || path.Length > 1 && path[^1] == '/')
            throw NotAllowed(path, "the path is not in its plain form (no '.', '..' or '//' segments, no trailing '/')");
        if (!Matches(path))
            throw NotAllowed(path, _patterns.Length == 0
                ? "no block devices are allowed (Storage:Devices is empty); image files are named relative to the image root"
                : "Storage:Devices does not match it; image files are named relative to the image root");
        string real;
        try
        {
            real = ImageRoot.RealPathOf(path);
        }
        catch (IOException e) when (e.HResult is LibC.ENOENT or LibC.ENOTDIR)
        {
            throw BlockErrors.NotFound("image-not-found", $"Could not open '{path}': No such device");
        }
        catch (IOException e)
        {
            throw BlockErrors.Invalid("invalid-path", $"Could not open '{path}': {e.Message}");
        }
        if (!Matches(real))
            throw NotAllowed(path, $"it leads to '{real}', which Storage:Devices does not match");
        return real;
    }

    private static BlockException NotAllowed(string path, string why) =>
        BlockErrors.Invalid("device-not-allowed", $"Device '{BlockErrors.Shorten(path)}' is not allowed: {why}");
}
