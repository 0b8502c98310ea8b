using BlockMirror.Api.Options;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The NBD TLS credentials of this host, loaded once from <c>Nbd:Tls</c> and <c>Nbd:Client:Tls</c>
/// when the service starts (<see cref="StartupChecks"/>), so a missing file, a key that does not
/// match or an expired certificate refuses the start instead of the first client.
/// </summary>
public sealed class NbdTlsCredentials
{
    private NbdTlsCredentials(NbdServerTls? server, NbdClientTls client)
    {
        Server = server;
        Client = client;
    }

    /// <summary>The server's credentials; null serves plain NBD.</summary>
    public NbdServerTls? Server { get; }

    /// <summary>What <c>nbds://</c> nodes connect with.</summary>
    public NbdClientTls Client { get; }

    /// <summary>Loads both sides; paths relative to <paramref name="contentRoot"/>. Throws <see cref="NbdTlsConfigurationException"/>.</summary>
    public static NbdTlsCredentials Load(NbdOptions options, string contentRoot)
    {
        var tls = options.Tls;
        var allowed = tls.AllowedClients.Where(a => !string.IsNullOrWhiteSpace(a)).ToList();
        NbdServerTls? server = null;
        if (Set(tls.CertificatePath))
        {
            if (!Set(tls.KeyPath))
                throw new NbdTlsConfigurationException("Nbd:Tls:CertificatePath needs Nbd:Tls:KeyPath, the certificate's private key");
            server = NbdServerTls.Load(Full(tls.CertificatePath!, contentRoot), Full(tls.KeyPath!, contentRoot),
                Set(tls.ClientCaPath) ? Full(tls.ClientCaPath!, contentRoot) : null, tls.RequireClientCertificate, allowed);
        }
        else if (Set(tls.KeyPath) || tls.RequireClientCertificate || allowed.Count > 0)
        {
            throw new NbdTlsConfigurationException(
                "Nbd:Tls settings are given but Nbd:Tls:CertificatePath is not: the NBD server would run without TLS (set the certificate, or remove the other Nbd:Tls settings)");
        }

        var client = options.Client.Tls;
        var ownIdentity = Set(client.CertificatePath) || Set(client.KeyPath);
        var caPath = Set(client.CaPath) ? client.CaPath : tls.ClientCaPath;
        var certificatePath = ownIdentity ? client.CertificatePath : tls.CertificatePath;
        var keyPath = ownIdentity ? client.KeyPath : tls.KeyPath;
        var clientTls = NbdClientTls.Load(
            Set(caPath) ? Full(caPath!, contentRoot) : null,
            Set(certificatePath) ? Full(certificatePath!, contentRoot) : null,
            Set(keyPath) ? Full(keyPath!, contentRoot) : null,
            Set(client.CaPath) ? "Nbd:Client:Tls:CaPath" : "Nbd:Tls:ClientCaPath (the client's CA by default)",
            ownIdentity ? "Nbd:Client:Tls:CertificatePath" : "Nbd:Tls:CertificatePath (the client's certificate by default)",
            ownIdentity ? "Nbd:Client:Tls:KeyPath" : "Nbd:Tls:KeyPath (the client's key by default)");
        return new NbdTlsCredentials(server, clientTls);
    }

    private static bool Set(string? value) => !string.IsNullOrWhiteSpace(value);

    private static string Full(string path, string contentRoot) => Path.GetFullPath(path, contentRoot);
}
