using BlockMirror.Nbd;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The NBD server says what went wrong through the host's <see cref="ILogger"/> (issue 13's logging
/// seam): a failure a connection swallows is an entry naming the client, at a level an operator sees.
/// </summary>
public sealed class NbdServerLogTests
{
    [Fact]
    public async Task A_client_that_breaks_the_protocol_is_logged_as_a_warning_naming_it()
    {
        var entries = new System.Collections.Concurrent.ConcurrentQueue<(LogLevel Level, string Text)>();
        await using var env = await NbdTestServer.StartAsync();
        await using var server = new NbdServer(env.Layer, new NbdServerOptions { Listen = NbdListenAddress.Tcp("127.0.0.1", 0) },
            new LevelLogger(entries));
        await server.StartAsync();

        await using var raw = await NbdRawConnection.OpenAsync(server.LocalEndPoint!);
        await raw.ReadGreetingAsync();
        await raw.WriteUInt32Async(3);
        await raw.SendOptionAsync(1, [], magic: 0x0123456789abcdef); // not IHAVEOPT

        Assert.True(await raw.IsClosedByServerAsync());
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!entries.Any(e => e.Text.Contains("disconnecting", StringComparison.Ordinal)) && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        var entry = Assert.Single(entries, e => e.Text.Contains("disconnecting", StringComparison.Ordinal));
        Assert.Equal(LogLevel.Warning, entry.Level);
        Assert.StartsWith("NBD client 127.0.0.1:", entry.Text, StringComparison.Ordinal);
    }

    private sealed class LevelLogger(System.Collections.Concurrent.ConcurrentQueue<(LogLevel, string)> entries) : ILogger<NbdServer>
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            entries.Enqueue((logLevel, formatter(state, exception)));
    }
}
