using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// A connection the server broke (its host restarted, the export was dropped and served again) is
/// replaced at the image's next request, as QEMU's nbd driver reconnects: the node goes on working
/// without being opened again, so a mirror stopped by the loss can resume.
/// </summary>
public sealed class NbdImageReconnectTests : IAsyncLifetime
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private NbdTestServer _server = null!;

    public async Task InitializeAsync() => _server = await NbdTestServer.StartAsync();

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task After_the_server_closed_the_connection_the_next_request_runs_on_a_new_one()
    {
        var expected = new byte[65536];
        new Random(5).NextBytes(expected);
        await using var image = await NbdImage.OpenAsync(_server.UriOf(), readOnly: false);
        await image.WriteAsync(0, expected);
        var first = image.Client;

        Assert.Equal(1, _server.Server.DisconnectExport("disk0"));
        // The client's reader sees the end of the stream and breaks the connection.
        Assert.True(SpinWait.SpinUntil(() => first.IsClosed, Bound), "the client never saw the server close");
        Assert.False(first.Abandoned);

        var back = new byte[expected.Length];
        await image.ReadAsync(0, back).AsTask().WaitAsync(Bound);
        Assert.Equal(expected, back);
        Assert.NotSame(first, image.Client);
        Assert.False(image.Client.IsClosed);
        await image.WriteAsync(1 << 20, expected).AsTask().WaitAsync(Bound);
    }

    [Fact]
    public async Task While_the_server_is_away_a_request_fails_with_an_error_naming_the_export()
    {
        var uri = _server.UriOf();
        await using var image = await NbdImage.OpenAsync(uri, readOnly: false);
        var first = image.Client;
        await _server.Server.StopAsync();
        Assert.True(SpinWait.SpinUntil(() => first.IsClosed, Bound), "the client never saw the server stop");

        var e = await Assert.ThrowsAnyAsync<IOException>(() => image.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(Bound));
        Assert.Contains(uri, e.Message, StringComparison.Ordinal);
    }
}
