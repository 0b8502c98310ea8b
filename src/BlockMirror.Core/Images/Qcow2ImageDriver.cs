using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Images;

/// <summary>
/// The <c>qcow2</c> driver: a qcow2 image file under the image root (<see cref="Qcow2Image"/>),
/// locked as QEMU locks it, over its backing chain (opened read-only, confined to the root, shared
/// between the images that name the same file). Creates images as <c>qemu-img create -f qcow2</c>.
/// </summary>
public sealed class Qcow2ImageDriver(ImageRoot root) : IImageDriver
{
    private const int DefaultClusterSize = 65536;

    private readonly BackingImages _backings = new(root);

    public string Name => "qcow2";

    /// <summary>Backing files open now (tests: every chain is closed with its last image).</summary>
    internal int OpenBackingFiles => _backings.OpenCount;

    public Task<OpenedImage> OpenAsync(ImageRequest request, CancellationToken cancellationToken)
    {
        if (request.Uri is not null)
            throw BlockErrors.Invalid("invalid-request", "The qcow2 driver takes a 'path', not a 'uri'");
        if (request.Path is null)
            throw BlockErrors.Invalid("invalid-request", "The qcow2 driver needs a 'path'");
        if (request.CacheDirect)
            throw BlockErrors.Invalid("invalid-request", "cache.direct is taken by the raw driver only (a qcow2 image's metadata goes through the page cache)");
        if (request.CreateSize is null && request.CreateOptions is { IsEmpty: false })
            throw BlockErrors.Invalid("invalid-request", "Creation options are only taken with a size to create");
        var full = root.Resolve(request.Path);
        if (Directory.Exists(full))
            throw BlockErrors.Invalid("path-outside-root", $"Path '{request.Path}' is a directory");
        var relative = root.ToRelative(full);
        var image = request.CreateSize is { } size
            ? Create(full, relative, size, request.CreateOptions)
            : Open(full, relative, request.ReadOnly);
        // A node's acknowledged writes survive a kill -9 of the service, as a raw node's do.
        image.MetadataWriteThrough = !image.ReadOnly;
        return Task.FromResult(new OpenedImage(image, relative, null));
    }

    private Qcow2Image Open(string full, string relative, bool readOnly)
    {
        if (!File.Exists(full))
            throw HostErrors.NotFound(relative);
        var image = HostErrors.Map(relative, () => Qcow2Image.Open(full, readOnly, backing: null, relative, root.AllowHardLinks));
        try
        {
            _backings.AttachBacking(image, full, new HashSet<string>(StringComparer.Ordinal) { full });
        }
        catch
        {
            image.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
        return image;
    }

    /// <summary>
    /// qemu-img create -f qcow2 [-b backing -F format]: everything is checked before the file is made;
    /// the backing path is stored relative to the new image's directory, as QEMU stores a relative one.
    /// </summary>
    private Qcow2Image Create(string full, string relative, long size, ImageCreateOptions? create)
    {
        create ??= new ImageCreateOptions(null, null, null);
        if (create.BackingFormat is not null and not ("raw" or "qcow2"))
            throw BlockErrors.Invalid("invalid-create-options", $"Could not create '{relative}': backing format must be raw or qcow2, not '{create.BackingFormat}'");
        string? backingFull = null;
        if (create.Backing is { } backing)
        {
            try
            {
                backingFull = root.Resolve(backing);
            }
            catch (BlockException e) when (e.Code == "path-outside-root")
            {
                throw BackingImages.Outside(relative, backing, e.Message);
            }
            if (backingFull == full)
                throw BlockErrors.Invalid("backing-chain-loop", $"Could not create '{relative}': an image cannot be its own backing file");
        }
        var options = new Qcow2CreateOptions
        {
            Size = size,
            ClusterSize = create.ClusterSize ?? DefaultClusterSize,
            BackingFile = backingFull is null ? null : Path.GetRelativePath(Path.GetDirectoryName(full)!, backingFull),
            BackingFormat = create.BackingFormat,
        };
        Qcow2Creator.Validate(options, relative);
        if (File.Exists(full) || new FileInfo(full).LinkTarget is not null)
            throw BlockErrors.Conflict("image-exists", $"Image '{relative}' already exists");

        var lease = backingFull is null ? null : _backings.Acquire(backingFull, create.BackingFormat, new HashSet<string>(StringComparer.Ordinal) { full }, relative);
        try
        {
            // The format found is stored, so the image never needs probing (QEMU requires -F for the same reason).
            if (lease is not null)
                options = options with { BackingFormat = lease.Format };
            CreateParentDirectory(full, relative);
            var image = HostErrors.Map(relative, () => Qcow2Image.Create(full, options, lease?.Image, relative));
            if (lease is not null)
                image.SetBacking(lease.Image, lease);
            return image;
        }
        catch
        {
            if (lease is not null)
                lease.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    private static void CreateParentDirectory(string full, string relative)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        }
        catch (IOException e) when (e is DirectoryNotFoundException || e.HResult is LibC.EEXIST or LibC.ENOTDIR)
        {
            throw BlockErrors.Invalid("invalid-path", $"Could not create '{relative}': a component of the path is not a directory");
        }
    }
}
