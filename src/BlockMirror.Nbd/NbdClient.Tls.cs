using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>NBD_OPT_STARTTLS for an <c>nbds</c> URI, first thing after the greeting (as libnbd and QEMU do), then the rest of the negotiation inside TLS.</summary>
public sealed partial class NbdClient
{
    private async Task StartTlsAsync(NbdClientTls tls, CancellationToken ct)
    {
        await SendOptionAsync(NbdConstants.OptStartTls, [], ct).ConfigureAwait(false);
        var (type, data) = await ReadOptionReplyAsync(NbdConstants.OptStartTls, ct).ConfigureAwait(false);
        if (type != NbdConstants.RepAck)
        {
            throw ConnectFailed(_uri, type is NbdConstants.RepErrPolicy or NbdConstants.RepErrUnsup
                ? $"the server does not offer TLS, and an nbds URI requires it ({DescribeOptionError(type, data)})"
                : DescribeOptionError(type, data));
        }

        // Name checked against the URI's host; over a Unix socket there is none (QEMU checks no name there either).
        var host = _uri.SocketPath is null ? _uri.Host : null;
        string? refusal = null;
        // Records read ahead and (once requests flow, see ConnectAsync) sent in batches: NbdTlsTransport.
        _transport = new NbdTlsTransport(_network);
        var session = new SslStream(_transport, leaveInnerStreamOpen: true);
        try
        {
            await session.AuthenticateAsClientAsync(tls.AuthenticationOptions(host, why => refusal = why), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is AuthenticationException or IOException)
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw ConnectFailed(_uri, refusal is not null
                ? $"TLS: the server is not trusted: {refusal}"
                : $"the TLS handshake failed: {NbdTlsFiles.Explain(e)}", e);
        }
        _tls = session;
        PeerSubject = (session.RemoteCertificate as X509Certificate2)?.Subject ?? session.RemoteCertificate?.Subject;
        _output = session;
        _input = new BufferedStream(session, NbdConstants.StreamBufferBytes);
    }
}
