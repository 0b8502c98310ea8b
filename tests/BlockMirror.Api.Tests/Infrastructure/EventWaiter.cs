using System.Net.ServerSentEvents;
using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// Reads GET /api/v1/events (Server-Sent Events) in the background so tests wait on events,
/// never on sleeps. Every event is kept; <see cref="WaitAsync"/> returns the first matching event
/// after the ones already consumed by earlier waits.
/// </summary>
public sealed class EventWaiter : IAsyncDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly List<SseEvent> _events = [];
    private readonly Channel<bool> _arrived = Channel.CreateUnbounded<bool>();
    private readonly Task _reader;
    private readonly TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public sealed record SseEvent(long Id, string Name, JsonNode Data);

    private EventWaiter(HttpClient http, long after)
    {
        _reader = Task.Run(() => ReadAsync(http, after));
    }

    public static async Task<EventWaiter> StartAsync(HttpClient http, long after = 0)
    {
        var waiter = new EventWaiter(http, after);
        await waiter._connected.Task.WaitAsync(TimeSpan.FromSeconds(30));
        return waiter;
    }

    public IReadOnlyList<SseEvent> Events
    {
        get
        {
            lock (_events)
                return [.. _events];
        }
    }

    private async Task ReadAsync(HttpClient http, long after)
    {
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, "/api/v1/events");
            if (after > 0)
                request.Headers.Add("Last-Event-ID", after.ToString(System.Globalization.CultureInfo.InvariantCulture));
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, _cts.Token);
            response.EnsureSuccessStatusCode();
            _connected.TrySetResult();
            await using var stream = await response.Content.ReadAsStreamAsync(_cts.Token);
            await foreach (var item in SseParser.Create(stream).EnumerateAsync(_cts.Token))
            {
                lock (_events)
                    _events.Add(new SseEvent(long.Parse(item.EventId!, System.Globalization.CultureInfo.InvariantCulture), item.EventType, JsonNode.Parse(item.Data)!));
                _arrived.Writer.TryWrite(true);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or HttpRequestException)
        {
            _connected.TrySetException(e);
        }
    }

    /// <summary>Waits for an event named <paramref name="name"/> whose data satisfies <paramref name="match"/>.</summary>
    public async Task<SseEvent> WaitAsync(string name, Func<JsonNode, bool>? match = null, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            lock (_events)
            {
                var found = _events.FirstOrDefault(e => e.Name == name && (match?.Invoke(e.Data) ?? true));
                if (found is not null)
                    return found;
            }
            try
            {
                await _arrived.Reader.ReadAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"No {name} event arrived; saw: {string.Join(", ", Events.Select(e => $"{e.Name} {e.Data.ToJsonString()}"))}");
            }
        }
    }

    /// <summary>Waits for JOB_STATUS_CHANGE of <paramref name="job"/> to <paramref name="status"/>.</summary>
    public Task<SseEvent> WaitStatusAsync(string job, string status, TimeSpan? timeout = null) =>
        WaitAsync("JOB_STATUS_CHANGE", d => (string?)d["id"] == job && (string?)d["status"] == status, timeout);

    /// <summary>The statuses <paramref name="job"/> went through, in order.</summary>
    public List<string> StatusesOf(string job) =>
        [.. Events.Where(e => e.Name == "JOB_STATUS_CHANGE" && (string?)e.Data["id"] == job).Select(e => (string)e.Data["status"]!)];

    public async ValueTask DisposeAsync()
    {
        await _cts.CancelAsync();
        try
        {
            await _reader;
        }
        catch (OperationCanceledException)
        {
        }
        _cts.Dispose();
    }
}
