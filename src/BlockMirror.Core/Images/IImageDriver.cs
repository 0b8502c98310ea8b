namespace BlockMirror.Core.Images;

/// <summary>
/// One image format or kind of storage, picked by name by <see cref="ImageOpener"/> (QEMU's
/// BlockDriver: "raw", "nbd"; qcow2 and host block devices register beside them).
/// </summary>
public interface IImageDriver
{
    /// <summary>The name a node spec and a stored node record give (<c>driver</c>).</summary>
    string Name { get; }

    /// <summary>
    /// Opens (with <see cref="ImageRequest.CreateSize"/>: creates) the image the request names.
    /// Refusals are <see cref="BlockException"/>s with a stable code, told by errno, never by the
    /// text of a message; a failure of the storage itself may be an <see cref="IOException"/>.
    /// </summary>
    Task<OpenedImage> OpenAsync(ImageRequest request, CancellationToken cancellationToken);
}
