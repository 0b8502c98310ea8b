using BlockMirror.Api.Infrastructure;
using BlockMirror.Api.Tests.Crash;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests.Lifecycle;

/// <summary>
/// A start that cannot go on ends with one clear line on stderr and an exit code (ExitCodes), never an
/// unhandled exception (SIGABRT, a core, 60 lines of stack); an address another server listens on is
/// never shared (issue 10, cases 2 and 18).
/// </summary>
public sealed class StartupRefusalTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-refusal-").FullName;
    private readonly string _other = Directory.CreateTempSubdirectory("blockmirror-refusal-").FullName;

    public void Dispose()
    {
        BlockMirrorFactory.DeleteDir(_dir);
        BlockMirrorFactory.DeleteDir(_other);
    }

    private static void AssertOneLine(ChildExit exit, int code, string expected)
    {
        Assert.True(exit.ExitCode == code, exit.ToString());
        var line = Assert.Single(exit.StderrLines);
        Assert.StartsWith("blockmirror: ", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", exit.Stdout + exit.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", exit.Stdout + exit.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_public_address_without_api_keys_is_refused()
    {
        var exit = await ChildService.RunToExitAsync(_dir, "--Urls", "http://0.0.0.0:0");
        AssertOneLine(exit, ExitCodes.Configuration, "without Auth:ApiKeys");
        Assert.False(File.Exists(Path.Combine(_dir, "blockmirror.db")), "refused before the database was created");
    }

    [Theory]
    [InlineData("Storage:MaxDataBodyBytes", "abc", "Storage:MaxDataBodyBytes")]
    [InlineData("Nbd:MaxConnections", "0", "Nbd:MaxConnections")]
    [InlineData("Nbd:Listen", "nowhere", "Nbd:Listen")]
    [InlineData("Limits:HttpKeepAliveTimeout", "soon", "Limits:HttpKeepAliveTimeout")]
    [InlineData("Urls", "garbage", "Urls 'garbage'")]
    [InlineData("Jobs:AutoCopyModeWindow", "0", "Jobs:AutoCopyModeWindow")]
    [InlineData("Jobs:AutoCopyModeWindow", "later", "Jobs:AutoCopyModeWindow")]
    [InlineData("Bitmaps:ActivityLogExtentBytes", "3000000", "Bitmaps:ActivityLogExtentBytes")]
    [InlineData("Bitmaps:ActivityLogHotExtents", "0", "Bitmaps:ActivityLogHotExtents")]
    public async Task An_invalid_setting_is_refused_before_anything_starts(string key, string value, string named)
    {
        var exit = await ChildService.RunToExitAsync(_dir, "--" + key, value);
        AssertOneLine(exit, ExitCodes.Configuration, named);
        Assert.False(File.Exists(Path.Combine(_dir, "blockmirror.db")), "refused before the database was created");
    }

    [BlockMirror.Tests.Shared.OpensslFact]
    public async Task Nbd_tls_credentials_that_cannot_work_are_refused_with_one_line_naming_the_setting()
    {
        using var certs = new BlockMirror.Tests.Shared.TestCertificates();
        var a = certs.Issue("/CN=host-a");
        var b = certs.Issue("/CN=host-b");
        var missing = Path.Combine(certs.Directory, "missing.pem");
        (string[] Arguments, string Expected)[] cases =
        [
            (["--Nbd:Tls:CertificatePath", missing, "--Nbd:Tls:KeyPath", a.KeyPath], "Nbd:Tls:CertificatePath"),
            (["--Nbd:Tls:CertificatePath", a.CertificatePath, "--Nbd:Tls:KeyPath", b.KeyPath], "is not the private key of the certificate"),
            (["--Nbd:Tls:CertificatePath", a.CertificatePath], "needs Nbd:Tls:KeyPath"),
            (["--Nbd:Tls:CertificatePath", a.CertificatePath, "--Nbd:Tls:KeyPath", a.KeyPath, "--Nbd:Tls:RequireClientCertificate", "true"], "needs Nbd:Tls:ClientCaPath"),
            (["--Nbd:Client:Tls:CertificatePath", b.CertificatePath, "--Nbd:Client:Tls:KeyPath", a.KeyPath], "Nbd:Client:Tls:KeyPath"),
            (["--Nbd:Client:Tls:CaPath", missing], "Nbd:Client:Tls:CaPath"),
        ];
        foreach (var (arguments, expected) in cases)
        {
            var exit = await ChildService.RunToExitAsync(_dir, arguments);
            AssertOneLine(exit, ExitCodes.Configuration, expected);
            Assert.False(File.Exists(Path.Combine(_dir, "blockmirror.db")), "refused before the database was created");
        }
    }

    [Fact]
    public async Task A_rest_address_in_use_is_refused_and_the_other_server_keeps_it()
    {
        await using var first = await ChildService.StartAsync(_dir);
        var exit = await ChildService.RunToExitAsync(_other, "--Urls", first.Http.BaseAddress!.ToString().TrimEnd('/'));
        AssertOneLine(exit, ExitCodes.InUse, "address already in use");
        await first.Http.GetJsonAsync("/api/v1/nodes");
    }

    [Fact]
    public async Task An_nbd_port_in_use_is_refused_and_clients_only_ever_reach_the_first_server()
    {
        await using var first = await ChildService.StartAsync(_dir, "--Nbd:Listen", "127.0.0.1:0");
        var listening = first.NbdListening;
        Assert.NotNull(listening);
        await first.Http.CreateNodeAsync("d", 1 << 20);
        await first.Http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "d", writable = true }, System.Net.HttpStatusCode.Created);

        // Before, the second bound the same port too (SO_REUSEPORT) and served its own export "e".
        var exit = await ChildService.RunToExitAsync(_other, "--Nbd:Listen", listening);
        AssertOneLine(exit, ExitCodes.InUse, "Nbd:Listen");
        for (var i = 0; i < 8; i++)
        {
            await using var client = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd://{listening}/e"));
            Assert.Equal(1 << 20, client.Size);
        }
    }

    [Fact]
    public async Task An_nbd_socket_another_server_listens_on_is_refused_and_left_alone()
    {
        await using var first = await ChildService.StartAsync(_dir);
        await first.Http.CreateNodeAsync("d", 1 << 20);
        await first.Http.PostJsonAsync("/api/v1/exports", new { name = "e", node = "d", writable = false }, System.Net.HttpStatusCode.Created);

        var exit = await ChildService.RunToExitAsync(_other, "--Nbd:Listen", "unix:" + first.NbdSocket);
        AssertOneLine(exit, ExitCodes.InUse, "Nbd:Listen");
        await using var client = await NbdClient.ConnectAsync(NbdUri.Parse($"nbd+unix:///e?socket={first.NbdSocket}"));
        Assert.Equal(1 << 20, client.Size);
    }
}
