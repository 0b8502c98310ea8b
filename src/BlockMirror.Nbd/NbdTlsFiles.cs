using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.Nbd;

/// <summary>
/// Reads the PEM files TLS credentials are made of (the files QEMU's tls-creds-x509 directory
/// holds: a CA bundle, a certificate with its chain, a private key), and checks them the way QEMU
/// checks its credentials when it loads them: each problem is an
/// <see cref="NbdTlsConfigurationException"/> naming the file, found at start, not at the first client.
/// </summary>
internal static class NbdTlsFiles
{
    /// <summary>The certificates of a CA bundle (one or more CERTIFICATE blocks).</summary>
    public static X509Certificate2Collection LoadCertificates(string path, string setting)
    {
        var text = ReadText(path, setting);
        var certificates = new X509Certificate2Collection();
        try
        {
            certificates.ImportFromPem(text);
        }
        catch (CryptographicException e)
        {
            throw new NbdTlsConfigurationException($"{setting} '{path}' is not a PEM certificate file: {e.Message}", e);
        }
        if (certificates.Count == 0)
            throw new NbdTlsConfigurationException($"{setting} '{path}' holds no PEM CERTIFICATE block");
        return certificates;
    }

    /// <summary>
    /// A certificate with its private key (from <paramref name="keyPath"/>), and the rest of the
    /// certificate file as its chain; the certificate must be within its validity period now.
    /// </summary>
    public static (X509Certificate2 Certificate, X509Certificate2Collection Chain) LoadIdentity(string certificatePath, string keyPath, string certificateSetting, string keySetting, DateTime now)
    {
        var certificates = LoadCertificates(certificatePath, certificateSetting);
        var keyText = ReadText(keyPath, keySetting);
        if (keyText.Contains("ENCRYPTED PRIVATE KEY", StringComparison.Ordinal))
            throw new NbdTlsConfigurationException($"{keySetting} '{keyPath}' is encrypted; the key must be stored unencrypted (protect the file instead)");
        if (!keyText.Contains("PRIVATE KEY-----", StringComparison.Ordinal))
            throw new NbdTlsConfigurationException($"{keySetting} '{keyPath}' holds no PEM PRIVATE KEY block");
        X509Certificate2 identity;
        try
        {
            identity = X509Certificate2.CreateFromPem(certificates[0].ExportCertificatePem(), keyText);
        }
        catch (CryptographicException e)
        {
            throw new NbdTlsConfigurationException($"{keySetting} '{keyPath}' is not the private key of the certificate in {certificateSetting} '{certificatePath}' (or is malformed: {e.Message})", e);
        }
        var leaf = identity;
        if (now < leaf.NotBefore.ToUniversalTime())
            throw new NbdTlsConfigurationException($"{certificateSetting} '{certificatePath}' ({leaf.Subject}) is not valid before {leaf.NotBefore.ToUniversalTime():u}");
        if (now > leaf.NotAfter.ToUniversalTime())
            throw new NbdTlsConfigurationException($"{certificateSetting} '{certificatePath}' ({leaf.Subject}) expired on {leaf.NotAfter.ToUniversalTime():u}");
        var chain = new X509Certificate2Collection();
        for (var i = 1; i < certificates.Count; i++)
            chain.Add(certificates[i]);
        return (identity, chain);
    }

    /// <summary>
    /// Builds <paramref name="certificate"/>'s chain up to one of <paramref name="trusted"/> (the
    /// system's roots when null) for <paramref name="purpose"/> (TLS client or server
    /// authentication); null when it holds, else why not, in words.
    /// </summary>
    public static string? Verify(X509Certificate2 certificate, X509Certificate2Collection? extra, X509Certificate2Collection? trusted, Oid purpose)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(purpose);
        if (extra is not null)
            chain.ChainPolicy.ExtraStore.AddRange(extra);
        if (trusted is not null)
        {
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.AddRange(trusted);
        }
        if (chain.Build(certificate))
            return null;
        var flags = chain.ChainStatus.Aggregate(X509ChainStatusFlags.NoError, (all, s) => all | s.Status);
        if ((flags & X509ChainStatusFlags.NotTimeValid) != 0)
        {
            return certificate.NotAfter.ToUniversalTime() < DateTime.UtcNow
                ? $"the certificate of '{certificate.Subject}' expired on {certificate.NotAfter.ToUniversalTime():u}"
                : $"the certificate of '{certificate.Subject}' is not valid before {certificate.NotBefore.ToUniversalTime():u}";
        }
        if ((flags & (X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain)) != 0)
            return $"the certificate of '{certificate.Subject}' (issued by '{certificate.Issuer}') is not signed by a trusted CA";
        if ((flags & (X509ChainStatusFlags.NotValidForUsage | X509ChainStatusFlags.InvalidExtension)) != 0)
            return $"the certificate of '{certificate.Subject}' is not for TLS {(purpose.Value == ClientAuthentication.Value ? "client" : "server")} authentication (extended key usage)";
        return $"the certificate of '{certificate.Subject}' does not verify: {string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Distinct())}";
    }

    /// <summary>The extended key usage of a TLS client certificate.</summary>
    public static Oid ClientAuthentication { get; } = new("1.3.6.1.5.5.7.3.2");

    /// <summary>The extended key usage of a TLS server certificate.</summary>
    public static Oid ServerAuthentication { get; } = new("1.3.6.1.5.5.7.3.1");

    /// <summary>
    /// A subject name in one spelling, so <c>CN=host-b,O=Example</c> (QEMU's and GnuTLS's) and
    /// <c>CN=host-b, O=Example</c> (.NET's) compare equal, whatever string types the certificate
    /// used: the name is encoded and decoded again. Null when it is not a distinguished name.
    /// </summary>
    public static string? NormalizeSubject(string name)
    {
        try
        {
            return NormalizeSubject(new X500DistinguishedName(name));
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException or FormatException)
        {
            return null;
        }
    }

    /// <inheritdoc cref="NormalizeSubject(string)"/>
    public static string NormalizeSubject(X500DistinguishedName name) => new X500DistinguishedName(name.RawData).Name;

    /// <summary>An exception and its causes in one line: the inner ones carry the TLS alert or the OpenSSL reason.</summary>
    public static string Explain(Exception e)
    {
        var parts = new List<string>();
        for (var x = e; x is not null; x = x.InnerException)
        {
            if (!parts.Contains(x.Message))
                parts.Add(x.Message);
        }
        return string.Join(": ", parts);
    }

    private static string ReadText(string path, string setting)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new NbdTlsConfigurationException($"{setting} '{path}' cannot be read: {e.Message}", e);
        }
    }
}
