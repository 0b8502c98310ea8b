namespace BlockMirror.Core.Images;

/// <summary>
/// Opens a node's image with the driver its spec names (QEMU's bdrv_find_format + bdrv_open): one
/// registry of <see cref="IImageDriver"/>s by name, so a new format (qcow2) or kind of storage (host
/// block devices) is one more driver registered here, and nothing else picks drivers.
/// </summary>
public sealed class ImageOpener
{
    private readonly List<IImageDriver> _drivers = [];

    public ImageOpener(params IEnumerable<IImageDriver> drivers)
    {
        foreach (var driver in drivers)
            Register(driver);
    }

    /// <summary>Adds a driver; a second one of the same name is a programming error.</summary>
    public void Register(IImageDriver driver)
    {
        if (_drivers.Any(d => d.Name == driver.Name))
            throw new InvalidOperationException($"An image driver named '{driver.Name}' is registered already");
        _drivers.Add(driver);
    }

    /// <summary>Opens the image with the driver named <paramref name="driver"/>; an unknown name is <c>invalid-request</c>.</summary>
    public Task<OpenedImage> OpenAsync(string driver, ImageRequest request, CancellationToken cancellationToken)
    {
        var found = _drivers.FirstOrDefault(d => d.Name == driver)
            ?? throw BlockErrors.Invalid("invalid-request", $"Unknown driver '{driver}' (expected {Expected()})");
        return found.OpenAsync(request, cancellationToken);
    }

    /// <summary>"'raw' or 'nbd'": the names a request may give.</summary>
    private string Expected()
    {
        var names = _drivers.Select(d => $"'{d.Name}'").ToList();
        return names.Count <= 1 ? string.Concat(names) : $"{string.Join(", ", names[..^1])} or {names[^1]}";
    }
}
