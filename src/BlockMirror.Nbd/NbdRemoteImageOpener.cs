using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Nbd;

/// <summary>
/// Opens <c>nbd</c> nodes for the block layer: parses the URI (<c>invalid-uri</c>) and connects
/// (<c>nbd-connect-failed</c>), returning an <see cref="NbdImage"/>.
/// </summary>
public sealed class NbdRemoteImageOpener : IRemoteImageOpener
{
    private readonly NbdClientOptions _options;

    /// <summary>Creates an opener whose connections use <paramref name="options"/> (defaults when null).</summary>
    public NbdRemoteImageOpener(NbdClientOptions? options = null)
    {
        _options = options ?? new NbdClientOptions();
    }

    /// <inheritdoc />
    public async Task<IBlockImage> OpenAsync(string uri, bool readOnly, CancellationToken cancellationToken) =>
        await NbdImage.OpenAsync(uri, readOnly, _options, cancellationToken).ConfigureAwait(false);
}
