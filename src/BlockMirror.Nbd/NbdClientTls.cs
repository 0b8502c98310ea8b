using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.Nbd;

/// <summary>
/// How an <see cref="NbdClient"/> does TLS for an <c>nbds://</c> export (QEMU's
/// <c>tls-creds-x509,endpoint=client</c>): the CA the server's certificate must chain to (the
/// system's roots when none) and this host's certificate, presented when the server asks for one.
/// </summary>
public sealed class NbdClientTls
{
    private NbdClientTls(X509Certificate2Collection? ca, SslStreamCertificateContext? certificate)
    {
        Ca = ca;
        Certificate = certificate;
    }

    /// <summary>The system's roots, no client certificate.</summary>
    public static NbdClientTls Default { get; } = new(null, null);

    /// <summary>The CA the server must chain to; null = the system's trusted roots.</summary>
    public X509Certificate2Collection? Ca { get; }

    /// <summary>This host's certificate with its key; null = none presented.</summary>
    public SslStreamCertificateContext? Certificate { get; }

    /// <summary>
    /// Loads the CA bundle and the certificate and key (both or neither); the setting names are
    /// for the messages. Throws <see cref="NbdTlsConfigurationException"/>.
    /// </summary>
    public static NbdClientTls Load(string? caPath, string? certificatePath, string? keyPath,
        string caSetting = "Nbd:Client:Tls:CaPath", string certificateSetting = "Nbd:Client:Tls:CertificatePath", string keySetting = "Nbd:Client:Tls:KeyPath")
    {
        var ca = string.IsNullOrWhiteSpace(caPath) ? null : NbdTlsFiles.LoadCertificates(caPath, caSetting);
        var hasCertificate = !string.IsNullOrWhiteSpace(certificatePath);
        if (hasCertificate != !string.IsNullOrWhiteSpace(keyPath))
            throw new NbdTlsConfigurationException($"{certificateSetting} and {keySetting} go together: set both or neither");
        SslStreamCertificateContext? context = null;
        if (hasCertificate)
        {
            var (certificate, chain) = NbdTlsFiles.LoadIdentity(certificatePath!, keyPath!, certificateSetting, keySetting, DateTime.UtcNow);
            context = SslStreamCertificateContext.Create(certificate, chain, offline: true);
        }
        return new NbdClientTls(ca, context);
    }

    /// <summary>Credentials as they are, without <see cref="Load"/>'s checks (tests: a client presenting an expired certificate).</summary>
    internal static NbdClientTls Unchecked(X509Certificate2Collection? ca, SslStreamCertificateContext? certificate) => new(ca, certificate);

    /// <summary>
    /// The handshake options for a server reached as <paramref name="host"/> (null over a Unix
    /// socket: no name to check, as QEMU without tls-hostname). <paramref name="verdict"/> receives
    /// why the server's certificate was refused.
    /// </summary>
    internal SslClientAuthenticationOptions AuthenticationOptions(string? host, Action<string> verdict) => new()
    {
        TargetHost = host ?? "",
        EnabledSslProtocols = SslProtocols.Tls13,
        ClientCertificateContext = Certificate,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
        {
            if (certificate is null)
            {
                verdict("the server sent no certificate");
                return false;
            }
            var server = certificate as X509Certificate2 ?? new X509Certificate2(certificate);
            var extra = chain?.ChainPolicy.ExtraStore; // the intermediates the server sent
            if (NbdTlsFiles.Verify(server, extra, Ca, NbdTlsFiles.ServerAuthentication) is { } untrusted)
            {
                verdict(untrusted);
                return false;
            }
            if (host is not null && (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
            {
                verdict($"the certificate of '{server.Subject}' is not for '{host}' (its subject alternative names do not list it)");
                return false;
            }
            return true;
        },
    };
}
