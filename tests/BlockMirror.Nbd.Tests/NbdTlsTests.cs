using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using BlockMirror.Core;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// NBD over TLS between our client and our server: NBD_OPT_STARTTLS, the session carrying the
/// whole protocol, and every refusal (plain client, wrong CA, expired, no or unknown client
/// certificate) clear on both sides. Certificates are made by openssl in a temp directory.
/// </summary>
public sealed class NbdTlsTests : IDisposable
{
    private readonly TestCertificates _certs = new();
    private readonly TestIdentity _server;
    private readonly TestIdentity _client;

    public NbdTlsTests()
    {
        _server = _certs.Issue("/O=BlockMirror/CN=host-a");
        _client = _certs.Issue("/O=BlockMirror/CN=host-b");
    }

    public void Dispose() => _certs.Dispose();

    private Task<NbdTestServer> StartServerAsync(bool unix = false, bool requireClient = false, params string[] allowed) =>
        NbdTestServer.StartAsync(unix, o => o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath,
            requireClient || allowed.Length > 0 ? _certs.Ca.CertificatePath : null, requireClient, allowed));

    private NbdClientOptions ClientOptions(TestIdentity? identity = null, TestCa? ca = null) => new()
    {
        Tls = NbdClientTls.Load((ca ?? _certs.Ca).CertificatePath, identity?.CertificatePath, identity?.KeyPath),
    };

    private static Task<NbdClient> ConnectTlsAsync(NbdTestServer server, NbdClientOptions options, string export = "disk0") =>
        NbdClient.ConnectAsync(NbdUri.Parse(NbdUri.WithTls(server.UriOf(export))), options);

    [OpensslFact]
    public async Task Tls_session_carries_reads_writes_and_block_status_and_names_the_peer()
    {
        await using var server = await StartServerAsync();
        await using var client = await ConnectTlsAsync(server, ClientOptions());
        Assert.True(client.Tls);
        Assert.Equal("CN=host-a, O=BlockMirror", client.PeerSubject);
        Assert.True(client.StructuredReplies);

        // Larger than the server's receive buffer and the TLS gather buffer, so the payload and
        // the read's reply cross many TLS records.
        var data = new byte[3 * 1024 * 1024 + 123];
        Random.Shared.NextBytes(data);
        await client.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await client.ReadAsync(4096, back);
        Assert.Equal(data, back);

        // A burst of small requests, their replies coalesced into TLS writes.
        var small = Enumerable.Range(0, 64).Select(i => client.WriteAsync(i * 4096L, new byte[] { (byte)i }).AsTask());
        await Task.WhenAll(small);
        var one = new byte[1];
        await client.ReadAsync(63 * 4096L, one);
        Assert.Equal(63, one[0]);

        var status = await client.BlockStatusAsync(0, NbdTestServer.DiskSize);
        Assert.Contains(NbdConstants.BaseAllocation, status.Keys);
        Assert.Contains(server.Log, l => l.Contains("TLS Tls13 session", StringComparison.Ordinal));
    }

    [OpensslFact]
    public async Task Tls_works_over_a_unix_socket_without_a_host_name_to_check()
    {
        await using var server = await StartServerAsync(unix: true);
        await using var client = await ConnectTlsAsync(server, ClientOptions());
        Assert.True(client.Tls);
        var buffer = new byte[512];
        await client.ReadAsync(0, buffer);
    }

    [OpensslFact]
    public async Task Plain_client_of_a_tls_server_is_refused_as_tls_required_and_the_server_logs_it()
    {
        var refused = new List<string>();
        await using var server = await NbdTestServer.StartAsync(configure: o =>
        {
            o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, null, false, null);
        }, refused: l => { lock (refused) refused.Add(l); });
        var e = await Assert.ThrowsAsync<BlockException>(() => server.ConnectAsync());
        Assert.Equal("nbd-connect-failed", e.Code);
        Assert.Contains("requires TLS", e.Message, StringComparison.Ordinal);
        await WaitForAsync(() => { lock (refused) return refused.Count > 0; });
        lock (refused)
            Assert.Contains(refused, l => l.Contains("127.0.0.1:", StringComparison.Ordinal) && l.Contains("TLS is required", StringComparison.Ordinal));
    }

    [OpensslFact]
    public async Task Before_tls_every_option_but_starttls_gets_tls_reqd_and_export_name_hangs_up()
    {
        await using var server = await StartServerAsync();
        await using (var raw = await NbdRawConnection.OpenAsync(server.Server.LocalEndPoint))
        {
            await raw.StartAsync();
            await raw.SendOptionAsync(NbdConstants.OptList, []);
            Assert.Equal(NbdConstants.RepErrTlsReqd, (await raw.ReadOptionReplyAsync(NbdConstants.OptList)).Type);
            await raw.SendOptionAsync(NbdConstants.OptGo, NbdRawConnection.NameAndInfoRequests("disk0"));
            Assert.Equal(NbdConstants.RepErrTlsReqd, (await raw.ReadOptionReplyAsync(NbdConstants.OptGo)).Type);
            await raw.SendOptionAsync(NbdConstants.OptExportName, "disk0"u8.ToArray());
            Assert.True(await raw.IsClosedByServerAsync());
        }
        await using (var raw = await NbdRawConnection.OpenAsync(server.Server.LocalEndPoint))
        {
            // STARTTLS with data: QEMU drops such a client after the error.
            await raw.StartAsync();
            await raw.SendOptionAsync(NbdConstants.OptStartTls, [1]);
            Assert.Equal(NbdConstants.RepErrInvalid, (await raw.ReadOptionReplyAsync(NbdConstants.OptStartTls)).Type);
            Assert.True(await raw.IsClosedByServerAsync());
        }
    }

    [OpensslFact]
    public async Task Bytes_sent_behind_starttls_before_its_reply_end_the_connection()
    {
        await using var server = await StartServerAsync();
        await using var raw = await NbdRawConnection.OpenAsync(server.Server.LocalEndPoint);
        await raw.StartAsync();
        // STARTTLS and a plain option in one write: the option must not be taken into the session.
        var start = NbdRawConnection.OptionBytes(NbdConstants.OptStartTls, []);
        var injected = NbdRawConnection.OptionBytes(NbdConstants.OptList, []);
        await raw.WriteAsync([.. start, .. injected]);
        Assert.True(await raw.IsClosedByServerAsync());
    }

    [OpensslFact]
    public async Task A_server_without_tls_refuses_starttls_by_policy_and_an_nbds_client_says_so()
    {
        await using var server = await NbdTestServer.StartAsync();
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions()));
        Assert.Contains("does not offer TLS", e.Message, StringComparison.Ordinal);
    }

    [OpensslFact]
    public async Task Client_refuses_a_server_certificate_of_another_ca()
    {
        await using var server = await StartServerAsync();
        var other = _certs.NewCa("Some Other CA");
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions(ca: other)));
        Assert.Equal("nbd-connect-failed", e.Code);
        Assert.Contains("not signed by a trusted CA", e.Message, StringComparison.Ordinal);
        Assert.Contains("CN=host-a", e.Message, StringComparison.Ordinal);
    }

    [OpensslFact]
    public async Task Client_refuses_an_expired_server_certificate()
    {
        var expired = _certs.Issue("/CN=old-server", expired: true);
        // Our server refuses to load an expired certificate (as QEMU does), so it is given one unchecked here.
        await using var server = await NbdTestServer.StartAsync(configure: o => o.Tls = NbdServerTls.Unchecked(Context(expired), null, false, []));
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions()));
        Assert.Contains("expired", e.Message, StringComparison.Ordinal);
        Assert.Contains("old-server", e.Message, StringComparison.Ordinal);

        var load = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(expired.CertificatePath, expired.KeyPath, null, false, null));
        Assert.Contains("expired", load.Message, StringComparison.Ordinal);
        Assert.Contains("Nbd:Tls:CertificatePath", load.Message, StringComparison.Ordinal);
    }

    private static SslStreamCertificateContext Context(TestIdentity identity) =>
        SslStreamCertificateContext.Create(X509Certificate2.CreateFromPemFile(identity.CertificatePath, identity.KeyPath), null, offline: true);

    [OpensslFact]
    public async Task Server_requiring_client_certificates_refuses_a_client_without_one_and_says_why()
    {
        var refused = new List<string>();
        await using var server = await NbdTestServer.StartAsync(configure: o =>
        {
            o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, _certs.Ca.CertificatePath, true, null);
        }, refused: l => { lock (refused) refused.Add(l); });
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions()));
        Assert.Contains("a client certificate is required", e.Message, StringComparison.Ordinal);
        lock (refused)
            Assert.Contains(refused, l => l.Contains("127.0.0.1:", StringComparison.Ordinal) && l.Contains("a client certificate is required", StringComparison.Ordinal));

        await using var client = await ConnectTlsAsync(server, ClientOptions(_client));
        Assert.True(client.Tls);
        Assert.Contains(server.Log, l => l.Contains("host-b", StringComparison.Ordinal));
    }

    [OpensslFact]
    public async Task Server_refuses_a_client_certificate_of_another_ca()
    {
        await using var server = await StartServerAsync(requireClient: true);
        var stranger = _certs.Issue("/CN=stranger", _certs.NewCa("Stranger CA"));
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions(stranger)));
        Assert.Contains("refused by server policy", e.Message, StringComparison.Ordinal);
        Assert.Contains("not signed by a trusted CA", e.Message, StringComparison.Ordinal);
    }

    [OpensslFact]
    public async Task Server_refuses_an_expired_client_certificate()
    {
        await using var server = await StartServerAsync(requireClient: true);
        var expired = _certs.Issue("/CN=expired-client", expired: true);
        // Our own client refuses to load it too; present it the way another client would.
        var options = new NbdClientOptions { Tls = NbdClientTls.Unchecked(CaOf(_certs.Ca), Context(expired)) };
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, options));
        Assert.Contains("expired", e.Message, StringComparison.Ordinal);
    }

    [OpensslFact]
    public async Task Server_with_allowed_clients_refuses_an_unknown_identity_and_takes_a_listed_one()
    {
        var refused = new List<string>();
        await using var server = await NbdTestServer.StartAsync(configure: o =>
        {
            o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, _certs.Ca.CertificatePath, false, ["CN=host-b,O=BlockMirror"]);
        }, refused: l => { lock (refused) refused.Add(l); });
        var other = _certs.Issue("/O=BlockMirror/CN=host-c");
        var e = await Assert.ThrowsAsync<BlockException>(() => ConnectTlsAsync(server, ClientOptions(other)));
        Assert.Contains("client identity", e.Message, StringComparison.Ordinal);
        Assert.Contains("host-c", e.Message, StringComparison.Ordinal);
        lock (refused)
            Assert.Contains(refused, l => l.Contains("host-c", StringComparison.Ordinal) && l.Contains("not authorized", StringComparison.Ordinal));

        // QEMU's spelling (GnuTLS: no space, most specific first) matches .NET's.
        await using var client = await ConnectTlsAsync(server, ClientOptions(_client));
        Assert.True(client.Tls);
    }

    [OpensslFact]
    public async Task Abandoned_connection_is_replaced_by_a_new_tls_session()
    {
        using var answering = new ManualResetEventSlim(initialState: true);
        var stalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await NbdTestServer.StartAsync(configure: o =>
        {
            o.Tls = NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, null, false, null);
            // On the server's reader: while not answering, a write blocks the connection.
            o.RequestReceived = (_, command) =>
            {
                if (command == "write" && !answering.IsSet)
                {
                    stalled.TrySetResult();
                    answering.Wait();
                }
            };
        });
        try
        {
            await using var image = await NbdImage.OpenAsync(NbdUri.WithTls(server.UriOf()), readOnly: false, ClientOptions());
            var first = image.Client;
            answering.Reset();
            using var cancel = new CancellationTokenSource();
            var stuck = image.WriteAsync(1 << 20, new byte[4096], cancellationToken: cancel.Token).AsTask();
            await stalled.Task.WaitAsync(TimeSpan.FromSeconds(10));
            await cancel.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stuck.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.True(first.Abandoned);
            answering.Set();

            // The next operation reconnects, and the new connection does TLS again.
            await image.WriteAsync(0, new byte[] { 7 });
            Assert.NotSame(first, image.Client);
            Assert.True(image.Client.Tls);
            Assert.Contains("host-a", image.Client.PeerSubject, StringComparison.Ordinal);
        }
        finally
        {
            answering.Set();
        }
    }

    [OpensslFact]
    public void Credentials_that_cannot_work_are_refused_when_loaded_naming_the_file()
    {
        var missing = Path.Combine(_certs.Directory, "missing.pem");
        var e = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(missing, _server.KeyPath, null, false, null));
        Assert.Contains("Nbd:Tls:CertificatePath", e.Message, StringComparison.Ordinal);
        Assert.Contains("cannot be read", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(_server.CertificatePath, _client.KeyPath, null, false, null));
        Assert.Contains("is not the private key of the certificate", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(_server.CertificatePath, _server.CertificatePath, null, false, null));
        Assert.Contains("no PEM PRIVATE KEY", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, null, true, null));
        Assert.Contains("Nbd:Tls:ClientCaPath", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<NbdTlsConfigurationException>(() => NbdServerTls.Load(_server.CertificatePath, _server.KeyPath, _certs.Ca.CertificatePath, false, ["not a name"]));
        Assert.Contains("AllowedClients", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<NbdTlsConfigurationException>(() => NbdClientTls.Load(_certs.Ca.CertificatePath, _client.CertificatePath, null));
        Assert.Contains("set both or neither", e.Message, StringComparison.Ordinal);
    }

    private static X509Certificate2Collection CaOf(TestCa ca)
    {
        var collection = new X509Certificate2Collection();
        collection.ImportFromPemFile(ca.CertificatePath);
        return collection;
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in 10 s");
            await Task.Delay(10);
        }
    }
}
