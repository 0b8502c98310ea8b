namespace BlockMirror.Api.Options;

/// <summary>
/// TLS of the NBD server (<c>Nbd:Tls</c>), QEMU's <c>tls-creds-x509,endpoint=server</c> and
/// <c>tls-authz</c>. With a certificate, every client must start TLS (NBD_OPT_STARTTLS); plain ones
/// are refused with NBD_REP_ERR_TLS_REQD. Relative paths are taken from the content root.
/// </summary>
public sealed class NbdTlsOptions
{
    /// <summary>The server's certificate (PEM; intermediates may follow it in the file). Empty = no TLS.</summary>
    public string? CertificatePath { get; set; }

    /// <summary>The certificate's private key (PEM, unencrypted).</summary>
    public string? KeyPath { get; set; }

    /// <summary>The CA (PEM) client certificates must chain to; also this host's CA for its own connections unless <c>Nbd:Client:Tls:CaPath</c> is set.</summary>
    public string? ClientCaPath { get; set; }

    /// <summary>Refuse clients without a certificate from <see cref="ClientCaPath"/>.</summary>
    public bool RequireClientCertificate { get; set; }

    /// <summary>Client subject names allowed (e.g. <c>CN=host-b</c>, as QEMU's tls-authz lists them); empty = any the CA signed. Setting any implies client certificates.</summary>
    public List<string> AllowedClients { get; set; } = [];
}
