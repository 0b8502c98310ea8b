using BlockMirror.Core;
using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

public sealed class NbdUriTests
{
    [Theory]
    [InlineData("nbd://127.0.0.1:10810/disk0", "127.0.0.1", 10810, null, "disk0")]
    [InlineData("nbd://localhost/disk0", "localhost", 10809, null, "disk0")]
    [InlineData("nbd://[::1]:9000/a%20b", "::1", 9000, null, "a b")]
    [InlineData("nbd://host.example", "host.example", 10809, null, "")]
    [InlineData("nbd+unix:///exp?socket=/run/x.sock", null, 0, "/run/x.sock", "exp")]
    [InlineData("nbd+unix:///?socket=/tmp/a%20b.sock", null, 0, "/tmp/a b.sock", "")]
    public void Parses_tcp_and_unix_uris(string text, string? host, int port, string? socket, string export)
    {
        var uri = NbdUri.Parse(text);
        Assert.Equal((host, port, socket, export), (uri.Host, uri.Port, uri.SocketPath, uri.ExportName));
        Assert.Equal(text, uri.ToString());
    }

    [Theory]
    [InlineData("nbds://127.0.0.1/disk0", "127.0.0.1", 10809, null, "disk0")]
    [InlineData("nbds+tcp://host.example:10810/d", "host.example", 10810, null, "d")]
    [InlineData("nbds+unix:///exp?socket=/run/x.sock", null, 0, "/run/x.sock", "exp")]
    public void Nbds_schemes_require_tls_as_in_libnbd(string text, string? host, int port, string? socket, string export)
    {
        var uri = NbdUri.Parse(text);
        Assert.True(uri.Tls);
        Assert.Equal((host, port, socket, export), (uri.Host, uri.Port, uri.SocketPath, uri.ExportName));
        Assert.False(NbdUri.Parse(text.Replace("nbds", "nbd", StringComparison.Ordinal)).Tls);
    }

    [Theory]
    [InlineData("nbd://h:1/e", "nbds://h:1/e")]
    [InlineData("NBD+UNIX:///e?socket=/s", "nbds+unix:///e?socket=/s")]
    [InlineData("nbd+tcp://h/e", "nbds+tcp://h/e")]
    [InlineData("nbds://h/e", "nbds://h/e")]
    public void WithTls_turns_the_scheme_into_its_tls_form(string uri, string expected) =>
        Assert.Equal(expected, NbdUri.WithTls(uri));

    [Theory]
    [InlineData("")]
    [InlineData("disk0")]
    [InlineData("http://127.0.0.1/disk0")]
    [InlineData("nbd://127.0.0.1:0/disk0")]
    [InlineData("nbd://127.0.0.1:70000/disk0")]
    [InlineData("nbd://127.0.0.1:x/disk0")]
    [InlineData("nbd:///disk0")]
    [InlineData("nbd://[::1/disk0")]
    [InlineData("nbd://user@host/disk0")]
    [InlineData("nbd://host/disk0?socket=/x")]
    [InlineData("nbd+unix:///disk0")]
    [InlineData("nbd+unix://host/disk0?socket=/x")]
    [InlineData("nbd+unix:///disk0?socket=/x&socket=/y")]
    [InlineData("nbd://host/disk0%zz")]
    [InlineData("nbds+unix:///disk0")]
    [InlineData("nbdx://host/disk0")]
    public void Refuses_bad_uris_with_invalid_uri(string text)
    {
        var e = Assert.Throws<BlockException>(() => NbdUri.Parse(text));
        Assert.Equal("invalid-uri", e.Code);
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
    }
}
