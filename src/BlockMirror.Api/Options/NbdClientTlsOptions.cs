namespace BlockMirror.Api.Options;

/// <summary>
/// This host's TLS identity towards NBD servers (<c>Nbd:Client:Tls</c>), QEMU's
/// <c>tls-creds-x509,endpoint=client</c>. Each path left empty falls back to the server's own
/// setting, so one CA and one certificate (with both TLS usages) make a host: the CA to
/// <c>Nbd:Tls:ClientCaPath</c>, the certificate and key to <c>Nbd:Tls:CertificatePath</c> and
/// <c>KeyPath</c>. Without any CA, servers are checked against the system's trusted roots.
/// </summary>
public sealed class NbdClientTlsOptions
{
    /// <summary>The CA (PEM) the servers' certificates must chain to.</summary>
    public string? CaPath { get; set; }

    /// <summary>This host's certificate (PEM), presented when a server asks for one.</summary>
    public string? CertificatePath { get; set; }

    /// <summary>Its private key (PEM, unencrypted).</summary>
    public string? KeyPath { get; set; }
}
