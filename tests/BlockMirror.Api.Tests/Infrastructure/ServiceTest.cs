namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// The shared set-up of the HTTP test classes: a service of its own for every test
/// (<see cref="BlockMirrorFactory"/>, with <c>settings</c> on top of the test defaults), a client,
/// and for classes that wait on events an event stream opened before the test runs. What a class
/// needs beyond that (nodes, bitmaps, data) goes in <see cref="SetUpAsync"/>.
/// </summary>
public abstract class ServiceTest : IAsyncLifetime
{
    private readonly bool _watchEvents;
    private EventWaiter? _events;

    protected ServiceTest(IDictionary<string, string?>? settings = null, bool watchEvents = false)
    {
        Factory = new BlockMirrorFactory(settings: settings);
        _watchEvents = watchEvents;
    }

    /// <summary>The service, in process.</summary>
    protected BlockMirrorFactory Factory { get; }

    protected HttpClient Http { get; private set; } = null!;

    /// <summary>The event stream (classes constructed with <c>watchEvents</c>).</summary>
    protected EventWaiter Events => _events ?? throw new InvalidOperationException("This test class does not watch events (watchEvents: true)");

    /// <summary>Settings that give the service an NBD server on a free loopback port.</summary>
    protected static Dictionary<string, string?> WithNbd() => new() { ["Nbd:Listen"] = "127.0.0.1:0" };

    public async Task InitializeAsync()
    {
        Http = Factory.CreateClient();
        if (_watchEvents)
            _events = await EventWaiter.StartAsync(Factory.CreateClient());
        await SetUpAsync();
    }

    /// <summary>What the tests of a class start from, beyond a running service.</summary>
    protected virtual Task SetUpAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_events is not null)
            await _events.DisposeAsync();
        await Factory.DisposeAsync();
    }
}
