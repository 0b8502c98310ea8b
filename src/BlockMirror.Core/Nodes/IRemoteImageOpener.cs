using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>Opens a remote image from a URI (the NBD client); provided by the host.</summary>
public interface IRemoteImageOpener
{
    /// <summary>Opens <paramref name="uri"/>; throws <see cref="BlockException"/> for bad URIs or unreachable servers.</summary>
    Task<IBlockImage> OpenAsync(string uri, bool readOnly, CancellationToken cancellationToken);
}
