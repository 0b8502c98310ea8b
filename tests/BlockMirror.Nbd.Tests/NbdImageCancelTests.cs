using BlockMirror.Nbd;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// Cancelling a request that is already on the wire to a server that does not answer: the caller
/// gets its cancellation at once, the connection is cut (the reply could otherwise land in a buffer
/// the caller gave up), another caller's request on it is run again on a new connection, and the
/// image goes on working.
/// </summary>
public sealed class NbdImageCancelTests : IAsyncLifetime
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private readonly ManualResetEventSlim _answering = new(initialState: true);
    private readonly TaskCompletionSource _stalled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private NbdTestServer _server = null!;

    public async Task InitializeAsync() =>
        _server = await NbdTestServer.StartAsync(configure: o => o.RequestReceived = (_, command) =>
        {
            // On the server's reader: while not answering, the first write blocks it, and with it the connection.
            if (command == "write" && !_answering.IsSet)
            {
                _stalled.TrySetResult();
                _answering.Wait();
            }
        });

    public async Task DisposeAsync()
    {
        _answering.Set();
        await _server.DisposeAsync();
        _answering.Dispose();
    }

    [Fact]
    public async Task A_request_cancelled_on_the_wire_cuts_the_connection_and_the_image_reconnects()
    {
        var expected = new byte[65536];
        new Random(4).NextBytes(expected);
        await using var image = await NbdImage.OpenAsync(_server.UriOf(), readOnly: false);
        await image.WriteAsync(0, expected);
        var first = image.Client;

        _answering.Reset();
        using var cancel = new CancellationTokenSource();
        var stuck = image.WriteAsync(1 << 20, new byte[4096], cancellationToken: cancel.Token).AsTask();
        await _stalled.Task.WaitAsync(Bound);
        // Another caller's read, queued behind the stalled write on the same connection.
        var back = new byte[expected.Length];
        var read = image.ReadAsync(0, back).AsTask();

        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stuck.WaitAsync(Bound));
        Assert.True(first.Abandoned);
        // The read was not cancelled: it ran again on a new connection (reads are still answered).
        await read.WaitAsync(Bound);
        Assert.Equal(expected, back);
        Assert.NotSame(first, image.Client);
        Assert.False(image.Client.Abandoned);

        _answering.Set();
        await image.WriteAsync(2 << 20, expected).AsTask().WaitAsync(Bound);
        await image.ReadAsync(2 << 20, back).AsTask().WaitAsync(Bound);
        Assert.Equal(expected, back);
    }

    [Fact]
    public async Task A_request_cancelled_before_it_is_sent_keeps_the_connection()
    {
        await using var image = await NbdImage.OpenAsync(_server.UriOf(), readOnly: false);
        var client = image.Client;
        using var cancel = new CancellationTokenSource();
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => image.ReadAsync(0, new byte[4096], cancel.Token).AsTask());
        Assert.False(client.Abandoned);
        await image.ReadAsync(0, new byte[4096]);
        Assert.Same(client, image.Client);
    }
}
