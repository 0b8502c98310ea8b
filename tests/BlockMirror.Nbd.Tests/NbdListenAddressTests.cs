using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

public sealed class NbdListenAddressTests
{
    [Theory]
    [InlineData("127.0.0.1:10809", "127.0.0.1", 10809, null)]
    [InlineData("0.0.0.0:0", "0.0.0.0", 0, null)]
    [InlineData("localhost:10810", "localhost", 10810, null)]
    [InlineData("[::1]:10809", "::1", 10809, null)]
    [InlineData("unix:/run/blockmirror/nbd.sock", null, 0, "/run/blockmirror/nbd.sock")]
    [InlineData("unix:rel.sock", null, 0, "rel.sock")]
    public void Parses(string text, string? host, int port, string? path)
    {
        var a = NbdListenAddress.Parse(text);
        Assert.Equal((host, port, path, path is not null), (a.Host, a.Port, a.SocketPath, a.IsUnix));
        Assert.Equal(text, a.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("127.0.0.1")]
    [InlineData(":10809")]
    [InlineData("127.0.0.1:65536")]
    [InlineData("127.0.0.1:-1")]
    [InlineData("::1:10809")]
    [InlineData("[::1]10809")]
    [InlineData("unix:")]
    public void Refuses(string text)
    {
        Assert.False(NbdListenAddress.TryParse(text, out _, out var error));
        Assert.False(string.IsNullOrEmpty(error));
        Assert.Throws<FormatException>(() => NbdListenAddress.Parse(text));
    }
}
