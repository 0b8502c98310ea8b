namespace BlockMirror.Api.Options;

/// <summary>How this host connects to other NBD servers (<c>Nbd:Client</c>), for <c>driver: nbd</c> nodes.</summary>
public sealed class NbdClientSection
{
    /// <summary>TLS for <c>nbds://</c> nodes (<c>Nbd:Client:Tls</c>).</summary>
    public NbdClientTlsOptions Tls { get; set; } = new();
}
