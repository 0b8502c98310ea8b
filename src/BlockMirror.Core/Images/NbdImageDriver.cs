using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Images;

/// <summary>
/// The <c>nbd</c> driver: an export of an NBD server, opened by the host's client
/// (<see cref="IRemoteImageOpener"/>; none = the driver refuses every request).
/// </summary>
public sealed class NbdImageDriver(IRemoteImageOpener? client) : IImageDriver
{
    public string Name => "nbd";

    public async Task<OpenedImage> OpenAsync(ImageRequest request, CancellationToken cancellationToken)
    {
        if (request.Path is not null)
            throw BlockErrors.Invalid("invalid-request", "The nbd driver takes a 'uri', not a 'path'");
        if (request.CreateSize is not null)
            throw BlockErrors.Invalid("invalid-request", "The nbd driver cannot create images");
        if (request.CacheDirect)
            throw BlockErrors.Invalid("invalid-request", "cache.direct is taken by the raw driver only (an nbd node has no local file)");
        if (string.IsNullOrWhiteSpace(request.Uri))
            throw BlockErrors.Invalid("invalid-request", "The nbd driver needs a 'uri'");
        if (client is null)
            throw BlockErrors.Invalid("invalid-request", "The nbd driver is not available");
        var image = await client.OpenAsync(request.Uri, request.ReadOnly, cancellationToken).ConfigureAwait(false);
        return new OpenedImage(image, null, request.Uri);
    }
}
