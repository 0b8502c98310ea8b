using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.Nbd;

/// <summary>
/// The NBD server's TLS credentials and client policy (QEMU's <c>tls-creds-x509,endpoint=server</c>
/// with its <c>verify-peer</c> and a <c>tls-authz</c> list). With them every client must send
/// NBD_OPT_STARTTLS first; the session is TLS 1.3. Client certificates are asked for when
/// <see cref="RequireClientCertificate"/> is set or <see cref="AllowedClients"/> names anyone, and
/// must then chain to <see cref="ClientCa"/>.
/// </summary>
public sealed class NbdServerTls
{
    private readonly HashSet<string> _allowed;

    private NbdServerTls(SslStreamCertificateContext certificate, X509Certificate2Collection? clientCa, bool requireClientCertificate, HashSet<string> allowed)
    {
        Certificate = certificate;
        ClientCa = clientCa;
        RequireClientCertificate = requireClientCertificate;
        _allowed = allowed;
    }

    /// <summary>The server's certificate with its key and chain.</summary>
    public SslStreamCertificateContext Certificate { get; }

    /// <summary>The CA client certificates must chain to; null when none is configured.</summary>
    public X509Certificate2Collection? ClientCa { get; }

    /// <summary>A client without a valid certificate is refused.</summary>
    public bool RequireClientCertificate { get; }

    /// <summary>Subject names (normalized) a client certificate must have; empty = any the CA signed.</summary>
    public IReadOnlyCollection<string> AllowedClients => _allowed;

    /// <summary>The server certificate's subject, for the log.</summary>
    public string Subject => Certificate.TargetCertificate.Subject;

    /// <summary>Client certificates are asked for (and checked).</summary>
    internal bool AsksClientCertificate => RequireClientCertificate || _allowed.Count > 0;

    /// <summary>
    /// Loads and checks the credentials: the certificate and key must be readable PEM and belong
    /// together, the certificate within its validity period; a client policy needs a CA; every
    /// allowed name must be a distinguished name. Throws <see cref="NbdTlsConfigurationException"/>.
    /// </summary>
    public static NbdServerTls Load(string certificatePath, string keyPath, string? clientCaPath, bool requireClientCertificate, IEnumerable<string>? allowedClients)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(certificatePath);
        ArgumentException.ThrowIfNullOrWhiteSpace(keyPath);
        var (certificate, chain) = NbdTlsFiles.LoadIdentity(certificatePath, keyPath, "Nbd:Tls:CertificatePath", "Nbd:Tls:KeyPath", DateTime.UtcNow);
        var clientCa = string.IsNullOrWhiteSpace(clientCaPath) ? null : NbdTlsFiles.LoadCertificates(clientCaPath, "Nbd:Tls:ClientCaPath");
        var allowed = new HashSet<string>(StringComparer.Ordinal);
        foreach (var name in allowedClients ?? [])
        {
            if (string.IsNullOrWhiteSpace(name))
                continue;
            allowed.Add(NbdTlsFiles.NormalizeSubject(name)
                ?? throw new NbdTlsConfigurationException($"Nbd:Tls:AllowedClients entry '{name}' is not a subject name (expected e.g. CN=host-b)"));
        }
        if ((requireClientCertificate || allowed.Count > 0) && clientCa is null)
        {
            throw new NbdTlsConfigurationException(
                $"Nbd:Tls:{(requireClientCertificate ? "RequireClientCertificate" : "AllowedClients")} needs Nbd:Tls:ClientCaPath, the CA that signs the clients' certificates");
        }
        var context = SslStreamCertificateContext.Create(certificate, chain, offline: true);
        return new NbdServerTls(context, clientCa, requireClientCertificate, allowed);
    }

    /// <summary>Credentials as they are, without <see cref="Load"/>'s checks (tests: a server offering an expired certificate).</summary>
    internal static NbdServerTls Unchecked(SslStreamCertificateContext certificate, X509Certificate2Collection? clientCa, bool requireClientCertificate, IEnumerable<string> allowedClients) =>
        new(certificate, clientCa, requireClientCertificate, [.. allowedClients.Select(n => NbdTlsFiles.NormalizeSubject(n)!)]);

    /// <summary>How a connection authenticates the server (TLS 1.3 only, a client certificate asked for when the policy needs one).</summary>
    internal SslServerAuthenticationOptions AuthenticationOptions(RemoteCertificateValidationCallback validate) => new()
    {
        ServerCertificateContext = Certificate,
        EnabledSslProtocols = SslProtocols.Tls13,
        ClientCertificateRequired = AsksClientCertificate,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        // Every client certificate is taken into the session and judged by Authorize afterwards,
        // so a refused client learns why in an NBD error reply instead of a bare TLS alert.
        RemoteCertificateValidationCallback = validate,
    };

    /// <summary>
    /// Whether the client that completed the TLS handshake with <paramref name="certificate"/> may
    /// use the server: null when it may, else why not (the text the client and the log are given).
    /// </summary>
    internal string? Authorize(X509Certificate2? certificate)
    {
        if (!AsksClientCertificate)
            return null;
        if (certificate is null)
            return "a client certificate is required";
        if (NbdTlsFiles.Verify(certificate, null, ClientCa, NbdTlsFiles.ClientAuthentication) is { } untrusted)
            return untrusted;
        if (_allowed.Count > 0 && !_allowed.Contains(NbdTlsFiles.NormalizeSubject(certificate.SubjectName)))
            return $"client identity '{certificate.Subject}' is not authorized";
        return null;
    }
}
