using System.Buffers.Binary;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Images;

/// <summary>
/// The backing images the qcow2 driver has open, read-only, one per file however many images sit on
/// it (QEMU shares a backing node the same way when one is named by several overlays): a chain is
/// opened once, and closed when the last image over it is closed. Each backing image that is itself
/// qcow2 holds a share of its own backing, so chains of any length close from the top down.
/// </summary>
internal sealed class BackingImages(ImageRoot root)
{
    // Reentrant (a qcow2 backing opens its own backing while the lock is held): one chain is opened
    // at a time, so two overlays on the same new base cannot both open it.
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Entry> _open = new(StringComparer.Ordinal);

    /// <summary>
    /// A share of the backing image at <paramref name="full"/> (opened now unless open already) in
    /// <paramref name="format"/> ("raw" or "qcow2"; probed from its first bytes when null, as QEMU
    /// does for an image that does not name its backing format). <paramref name="chain"/> holds the
    /// files above it: meeting one of them again is a loop. <paramref name="owner"/> names the image
    /// whose backing this is, for messages.
    /// </summary>
    public BackingLease Acquire(string full, string? format, IReadOnlySet<string> chain, string owner)
    {
        var relative = root.ToRelative(full);
        lock (_lock)
        {
            if (chain.Contains(full))
                throw BlockErrors.Invalid("backing-chain-loop", $"Could not open '{owner}': its backing chain comes back to '{relative}'");
            if (!_open.TryGetValue(full, out var entry))
            {
                entry = new Entry(Open(full, relative, format, chain, owner));
                _open.Add(full, entry);
            }
            else if (format is not null && format != FormatOf(entry.Image))
            {
                throw BlockErrors.Conflict("backing-format-mismatch",
                    $"Could not open '{owner}': its backing file '{relative}' is open as {FormatOf(entry.Image)}, not {format}");
            }
            entry.Shares++;
            return new BackingLease(this, full, entry.Image);
        }
    }

    /// <summary>Gives a share back; the last one closes the image (and so releases its own backing).</summary>
    internal ValueTask ReleaseAsync(string full)
    {
        IBlockImage? close = null;
        lock (_lock)
        {
            if (_open.TryGetValue(full, out var entry) && --entry.Shares == 0)
            {
                _open.Remove(full);
                close = entry.Image;
            }
        }
        return close?.DisposeAsync() ?? ValueTask.CompletedTask;
    }

    /// <summary>How many backing files are open (tests: a closed chain leaves none).</summary>
    internal int OpenCount
    {
        get
        {
            lock (_lock)
                return _open.Count;
        }
    }

    internal static string FormatOf(IBlockImage image) => image is ILayeredImage layered ? layered.Format : "raw";

    private IBlockImage Open(string full, string relative, string? format, IReadOnlySet<string> chain, string owner)
    {
        if (!File.Exists(full))
            throw BlockErrors.NotFound("backing-not-found", $"Could not open backing file '{relative}' of '{owner}': No such file or directory");
        format ??= Probe(full, relative);
        switch (format)
        {
            case "raw":
                return HostErrors.Map(relative, () => RawFileImage.Open(full, readOnly: true, relative, root.AllowHardLinks));
            case "qcow2":
                var image = HostErrors.Map(relative, () => Qcow2Image.Open(full, readOnly: true, backing: null, relative, root.AllowHardLinks));
                try
                {
                    AttachBacking(image, full, new HashSet<string>(chain, StringComparer.Ordinal) { full });
                }
                catch
                {
                    image.DisposeAsync().AsTask().GetAwaiter().GetResult(); // read-only: completes synchronously
                    throw;
                }
                return image;
            default:
                throw BlockErrors.Invalid(Qcow2Errors.FeatureUnsupportedCode,
                    $"Could not open '{owner}': backing format '{format}' of '{relative}' is not supported (raw or qcow2)");
        }
    }

    /// <summary>
    /// Opens the backing chain named in <paramref name="image"/>'s header (at <paramref name="full"/>)
    /// and attaches it. <paramref name="chain"/> holds the files from the top down to this image.
    /// </summary>
    public void AttachBacking(Qcow2Image image, string full, IReadOnlySet<string> chain)
    {
        if (image.BackingFileName is not { } name)
            return;
        var backingFull = ResolveBacking(full, name, image.Location);
        var lease = Acquire(backingFull, image.BackingFormat, chain, image.Location);
        image.SetBacking(lease.Image, lease);
    }

    /// <summary>
    /// A backing file name as stored in an image, resolved as QEMU resolves it (relative to the
    /// image's directory, or absolute) and confined to the image root like every path.
    /// </summary>
    private string ResolveBacking(string imageFull, string name, string owner)
    {
        if (name.Contains("://", StringComparison.Ordinal) || name.StartsWith("json:", StringComparison.Ordinal))
            throw BlockErrors.Invalid(Qcow2Errors.FeatureUnsupportedCode,
                $"Could not open '{owner}': backing file '{BlockErrors.Shorten(name)}' is not a file (protocol backing files are not supported)");
        var full = Path.GetFullPath(Path.IsPathRooted(name) ? name : Path.Combine(Path.GetDirectoryName(imageFull)!, name));
        if (!full.StartsWith(root.FullPath + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw Outside(owner, name, "it is outside the image root");
        try
        {
            return root.Resolve(root.ToRelative(full));
        }
        catch (BlockException e) when (e.Code == "path-outside-root")
        {
            throw Outside(owner, name, e.Message);
        }
    }

    internal static BlockException Outside(string owner, string backing, string why) =>
        BlockErrors.Invalid("backing-outside-root", $"Backing file '{BlockErrors.Shorten(backing)}' of '{owner}' is not allowed: {why}");

    /// <summary>qcow2 by its magic, raw otherwise (QEMU's probe among the formats this service opens).</summary>
    internal static string Probe(string full, string relative)
    {
        Span<byte> magic = stackalloc byte[4];
        try
        {
            using var handle = File.OpenHandle(full, FileMode.Open, FileAccess.Read);
            return RandomAccess.Read(handle, magic, 0) == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Format.Magic ? "qcow2" : "raw";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{relative}': {e.Message}");
        }
    }

    private sealed class Entry(IBlockImage image)
    {
        public IBlockImage Image { get; } = image;

        public int Shares { get; set; }
    }
}
