using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// NBD_OPT_STARTTLS on a server with TLS credentials, as QEMU's nbd_negotiate_options does it:
/// before TLS only STARTTLS (and ABORT) are taken, every other option gets NBD_REP_ERR_TLS_REQD and
/// NBD_OPT_EXPORT_NAME, which cannot be refused politely, ends the connection. After the ACK the
/// TLS 1.3 handshake runs on the connection's thread, and the option haggling continues inside it.
/// </summary>
internal sealed partial class NbdServerConnection
{
    private bool _plainRefusalLogged;

    /// <summary>What the handshake loop does with an option that arrived before TLS.</summary>
    private enum TlsGate
    {
        /// <summary>Handled here (STARTTLS, or refused): read the next option.</summary>
        Next,

        /// <summary>End the connection.</summary>
        Disconnect,

        /// <summary>Not handled here (ABORT): the ordinary handling applies.</summary>
        Proceed,
    }

    private TlsGate TlsFirst(NbdServerTls tls, uint option, uint length)
    {
        if (!_fixedNewstyle)
            throw new NbdProtocolException($"option {option} sent without fixed newstyle negotiation");
        switch (option)
        {
            case NbdConstants.OptStartTls:
                if (length != 0)
                {
                    // QEMU drops a client that cannot even start TLS correctly.
                    _input.Discard(length);
                    ReplyOption(option, NbdConstants.RepErrInvalid, "NBD_OPT_STARTTLS takes no data");
                    throw new NbdProtocolException("NBD_OPT_STARTTLS with data");
                }
                return StartTls(tls) ? TlsGate.Next : TlsGate.Disconnect;
            case NbdConstants.OptExportName:
                RefusePlain("it sent NBD_OPT_EXPORT_NAME without starting TLS; disconnecting");
                return TlsGate.Disconnect;
            case NbdConstants.OptAbort:
                return TlsGate.Proceed;
            default:
                _input.Discard(length);
                ReplyOption(option, NbdConstants.RepErrTlsReqd, "this server requires TLS (NBD_OPT_STARTTLS)");
                RefusePlain($"it sent option {option} without starting TLS (answered NBD_REP_ERR_TLS_REQD)");
                return TlsGate.Next;
        }
    }

    /// <summary>Logs the first option a plain client sends to a TLS server; its retries are not logged again.</summary>
    private void RefusePlain(string what)
    {
        if (_plainRefusalLogged)
            return;
        _plainRefusalLogged = true;
        _server.Logger.ClientRefused(Peer, "TLS is required and " + what);
    }

    /// <summary>
    /// Acknowledges STARTTLS and runs the TLS handshake; false (logged) when it failed. A client
    /// certificate is taken whatever it is and judged afterwards (<see cref="NbdServerTls.Authorize"/>),
    /// so an untrusted or unauthorized client is told why in NBD error replies, not by a bare alert.
    /// </summary>
    private bool StartTls(NbdServerTls tls)
    {
        // Bytes sent behind STARTTLS, before our reply, were not protected by TLS: reading them as
        // the start of the TLS handshake, or worse as options inside it, would let a man in the
        // middle inject them (the STARTTLS injection of SMTP, CVE-2011-0411).
        if (_input.HasBuffered)
            throw new NbdProtocolException("data sent after NBD_OPT_STARTTLS before its reply");
        SendOption(NbdConstants.OptStartTls, NbdConstants.RepAck, []);
        var transport = new NbdTlsTransport(new NetworkStream(_socket, ownsSocket: false));
        var session = new SslStream(transport, leaveInnerStreamOpen: false);
        try
        {
            session.AuthenticateAsServer(tls.AuthenticationOptions(static (_, _, _, _) => true));
        }
        catch (Exception e) when (e is AuthenticationException or IOException or SocketException or ObjectDisposedException)
        {
            session.Dispose();
            if (State < NbdConnectionState.Broken)
                _server.Logger.ClientRefused(Peer, "TLS handshake failed: " + NbdTlsFiles.Explain(e));
            return false;
        }
        // From here every message is flushed by NbdChannel.Send: its records can wait to go out together.
        transport.GatherWrites = true;
        _channel.StartTls(session);
        var certificate = session.RemoteCertificate as X509Certificate2;
        PeerSubject = certificate?.Subject;
        _tlsRefusal = tls.Authorize(certificate);
        if (_tlsRefusal is { } refusal)
            _server.Logger.ClientRefused(Peer, refusal);
        else
            _server.Logger.TlsSession(Peer, session.SslProtocol.ToString(), PeerSubject ?? "none");
        return true;
    }
}
