using System.Diagnostics;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// X.509 certificates for TLS tests, made by <c>openssl</c> (Debian's tool) in a temporary
/// directory removed with this object: nothing is checked in. One CA (<see cref="Ca"/>) signs the
/// identities; <see cref="NewCa"/> makes another, for "signed by the wrong CA". Keys are RSA 2048
/// with the usages QEMU's credential checks expect. <see cref="QemuDirectory"/> lays files out as
/// QEMU's <c>tls-creds-x509</c> and libnbd's <c>tls-certificates=</c> want them.
/// </summary>
internal sealed class TestCertificates : IDisposable
{
    private const string MinimalConfig = "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\n";
    private int _serial;

    public TestCertificates()
    {
        Directory = Path.Combine(Path.GetTempPath(), "bm-tls-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(Directory);
        File.WriteAllText(ConfigPath, MinimalConfig);
        Ca = NewCa("BlockMirror Test CA");
    }

    /// <summary>Whether openssl is installed (the tests that need it skip without it).</summary>
    public static bool Available => FindOpenssl() is not null;

    public string Directory { get; }

    /// <summary>The CA that signs <see cref="Issue"/>'s certificates unless told otherwise.</summary>
    public TestCa Ca { get; }

    private string ConfigPath => Path.Combine(Directory, "req.cnf");

    /// <summary>A self-signed CA named <paramref name="commonName"/>.</summary>
    public TestCa NewCa(string commonName)
    {
        var name = Next("ca");
        var cert = Path.Combine(Directory, name + "-cert.pem");
        var key = Path.Combine(Directory, name + "-key.pem");
        Openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=" + commonName, "-config", ConfigPath,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
        return new TestCa(cert, key);
    }

    /// <summary>
    /// A certificate for <paramref name="subject"/> (e.g. <c>/O=BlockMirror/CN=host-b</c>) signed by
    /// <paramref name="ca"/> (default <see cref="Ca"/>), for TLS servers and clients, naming localhost
    /// and 127.0.0.1 (plus <paramref name="addresses"/>); already expired when <paramref name="expired"/>.
    /// </summary>
    public TestIdentity Issue(string subject, TestCa? ca = null, bool expired = false, params string[] addresses)
    {
        ca ??= Ca;
        var name = Next("id");
        var cert = Path.Combine(Directory, name + "-cert.pem");
        var key = Path.Combine(Directory, name + "-key.pem");
        var request = Path.Combine(Directory, name + ".csr");
        var extensions = Path.Combine(Directory, name + ".ext");
        var alternative = string.Join(",", new[] { "DNS:localhost", "IP:127.0.0.1" }.Concat(addresses.Select(a => "IP:" + a)));
        File.WriteAllText(extensions,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" +
            $"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={alternative}\n");
        Openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", subject, "-config", ConfigPath);
        // -days -1 makes a certificate whose validity ended a day before it was made.
        Openssl("x509", "-req", "-in", request, "-CA", ca.CertificatePath, "-CAkey", ca.KeyPath, "-set_serial", (1000 + _serial).ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-out", cert, "-days", expired ? "-1" : "2", "-extfile", extensions);
        return new TestIdentity(cert, key, ca);
    }

    /// <summary>
    /// A directory as QEMU's <c>tls-creds-x509,dir=</c> (and libnbd's <c>tls-certificates=</c>) reads
    /// it: <c>ca-cert.pem</c>, and <c>server-</c> or <c>client-cert.pem</c>/<c>-key.pem</c>.
    /// </summary>
    public string QemuDirectory(string endpoint, TestIdentity? identity, TestCa? ca = null)
    {
        var dir = Path.Combine(Directory, Next("qemu-" + endpoint));
        System.IO.Directory.CreateDirectory(dir);
        File.Copy((ca ?? identity?.Ca ?? Ca).CertificatePath, Path.Combine(dir, "ca-cert.pem"));
        if (identity is not null)
        {
            File.Copy(identity.CertificatePath, Path.Combine(dir, endpoint + "-cert.pem"));
            File.Copy(identity.KeyPath, Path.Combine(dir, endpoint + "-key.pem"));
        }
        return dir;
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private string Next(string prefix) => $"{prefix}{++_serial}";

    private static string? FindOpenssl() =>
        new[] { "/usr/bin/openssl", "/usr/local/bin/openssl", "/bin/openssl" }.FirstOrDefault(File.Exists);

    private static void Openssl(params string[] arguments)
    {
        var info = new ProcessStartInfo(FindOpenssl() ?? throw new InvalidOperationException("openssl is not installed (apt-get install openssl)"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
            info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill();
            throw new TimeoutException("openssl " + string.Join(' ', arguments) + " did not finish");
        }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"openssl {string.Join(' ', arguments)} failed ({process.ExitCode}): {stderr.Result}{stdout.Result}");
    }
}
