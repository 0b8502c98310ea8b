namespace BlockMirror.Core.Images;

/// <summary>
/// The <c>raw</c> driver: a regular file under the image root (<see cref="RawFileImage"/>), created
/// sparse on request, or a host block device named by an absolute path that <c>Storage:Devices</c>
/// allows (<see cref="HostDeviceImage"/>, QEMU's host_device). Open failures become codes by errno
/// (<see cref="LibC"/>), never by message text.
/// </summary>
public sealed class RawImageDriver(ImageRoot root) : IImageDriver
{
    /// <summary>Sizes are whole sectors, as QEMU's raw images are.</summary>
    private const long SectorSize = 512;

    public string Name => "raw";

    public Task<OpenedImage> OpenAsync(ImageRequest request, CancellationToken cancellationToken)
    {
        if (DeviceAllowList.NamesDevice(request.Path))
            return Task.FromResult(new OpenedImage(OpenDevice(request.Path!, request.CreateSize, request.ReadOnly, request.CacheDirect), request.Path, null));
        var image = Open(request.Path, request.CreateSize, request.ReadOnly, request.CacheDirect);
        return Task.FromResult(new OpenedImage(image, root.ToRelative(root.Resolve(request.Path)), null));
    }

    private RawFileImage Open(string? path, long? createSize, bool readOnly, bool direct)
    {
        if (path is null)
            throw BlockErrors.Invalid("invalid-request", "The raw driver needs a 'path'");
        var full = root.Resolve(path);
        if (Directory.Exists(full))
            throw BlockErrors.Invalid("path-outside-root", $"Path '{path}' is a directory");
        try
        {
            if (createSize is { } size)
            {
                if (size < 0 || size % SectorSize != 0)
                    throw BlockErrors.Invalid("invalid-size", $"Image size {size} must be a non-negative multiple of {SectorSize}");
                if (File.Exists(full) || new FileInfo(full).LinkTarget is not null)
                    throw ImageExists(path);
                CreateParentDirectory(full, path);
                return RawFileImage.Create(full, size, path, direct);
            }
            if (!File.Exists(full))
                throw ImageNotFound(path);
            return RawFileImage.Open(full, readOnly, path, root.AllowHardLinks, direct);
        }
        catch (FileNotFoundException)
        {
            throw ImageNotFound(path);
        }
        catch (UnauthorizedAccessException e)
        {
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{path}': {e.Message}");
        }
        catch (IOException e) when (OpenErrorOf(e) is { } errno)
        {
            // By errno, never by message text: the file system said what is wrong with the path.
            throw errno switch
            {
                LibC.EEXIST => ImageExists(path),
                LibC.ENOENT => ImageNotFound(path),
                _ => BlockErrors.Invalid("invalid-path", $"Could not open '{path}': {e.Message}"),
            };
        }
    }

    /// <summary>
    /// A host block device: opened by its real path once the allow list passed the path as given and
    /// where it leads; the node keeps the path as given (a stable name is reopened by that name at the
    /// next start). Devices are never created: a <c>create</c> on an allowed device is refused, one on
    /// any other absolute path is outside the root, as it always was.
    /// </summary>
    private HostDeviceImage OpenDevice(string path, long? createSize, bool readOnly, bool direct)
    {
        if (createSize is not null)
        {
            if (!root.Devices.Matches(path))
                root.Resolve(path); // throws path-outside-root: files are only created under the root
            throw BlockErrors.Invalid("device-not-creatable", $"Device '{path}' exists: block devices are opened, never created (leave out 'create')");
        }
        return HostDeviceImage.Open(root.Devices.Resolve(path), readOnly, path, direct);
    }

    /// <summary>
    /// The errno of a failed open or mkdir that says something about the path (HResult carries it,
    /// see <see cref="LibC.ErrnoException"/>; .NET's own PathTooLongException is ENAMETOOLONG), or null.
    /// </summary>
    private static int? OpenErrorOf(IOException e) => e switch
    {
        PathTooLongException => LibC.ENAMETOOLONG,
        _ when e.HResult is LibC.EEXIST or LibC.ENOENT or LibC.ENOTDIR or LibC.ENAMETOOLONG or LibC.ELOOP or LibC.EISDIR => e.HResult,
        _ => null,
    };

    private static void CreateParentDirectory(string full, string path)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        }
        catch (IOException e) when (e is DirectoryNotFoundException || e.HResult is LibC.EEXIST or LibC.ENOTDIR)
        {
            // mkdir met a file where a directory should be.
            throw BlockErrors.Invalid("invalid-path", $"Could not create '{path}': a component of the path is not a directory");
        }
    }

    private static BlockException ImageExists(string path) =>
        BlockErrors.Conflict("image-exists", $"Image '{path}' already exists");

    private static BlockException ImageNotFound(string path) =>
        BlockErrors.NotFound("image-not-found", $"Could not open '{path}': No such file or directory");
}
