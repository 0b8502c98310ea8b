using System.Collections.Concurrent;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Stands in for the NBD client: nodes of driver "nbd" with a <c>fault://name</c> URI get the
/// image a test registered, so a node can sit on a <see cref="FaultInjectingImage"/>.
/// </summary>
public sealed class TestImageOpener : IRemoteImageOpener
{
    private readonly ConcurrentDictionary<string, IBlockImage> _images = new(StringComparer.Ordinal);

    public void Register(string uri, IBlockImage image) => _images[uri] = image;

    public Task<IBlockImage> OpenAsync(string uri, bool readOnly, CancellationToken cancellationToken) =>
        _images.TryRemove(uri, out var image)
            ? Task.FromResult(image)
            : throw BlockErrors.NotFound("image-not-found", $"No test image at '{uri}'");
}
