using BlockMirror.Core.Images;

namespace BlockMirror.Core.Nodes;

/// <summary>
/// A server in this process that serves the layer's exports (the NBD server). It recognises its
/// own clients: a node whose image is a connection to one of its exports reads and writes another
/// node of this layer, which a mirror must treat as that node (mirroring it into itself).
/// </summary>
public interface IExportServer
{
    /// <summary>The export <paramref name="image"/> is a connection to, when this server serves that connection; else null.</summary>
    string? ExportServing(IBlockImage image);
}
