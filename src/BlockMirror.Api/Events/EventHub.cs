using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Threading.Channels;
using BlockMirror.Api.Data;
using BlockMirror.Core.Events;
using Microsoft.EntityFrameworkCore;

namespace BlockMirror.Api.Events;

/// <summary>
/// The event sink of the block layer: assigns monotonic ids, fans events out to live SSE
/// subscribers, and persists them in order (a background writer batches inserts so publishing
/// never waits on SQLite). A subscriber that reconnects with Last-Event-ID replays from the
/// database, then from the in-memory tail, then live: nothing is lost or repeated.
/// </summary>
public sealed partial class EventHub : IEventSink, IAsyncDisposable
{
    private const int TailCapacity = 16384;

    private readonly IDbContextFactory<BlockMirrorDbContext> _factory;
    private readonly SqliteWriteLock _writeLock;
    private readonly JsonSerializerOptions _json;
    private readonly TimeProvider _time;
    private readonly ILogger<EventHub> _logger;
    private readonly Lock _lock = new();
    private readonly List<Channel<EventMessage>> _subscribers = [];
    private readonly LinkedList<EventMessage> _tail = new();
    private readonly Channel<EventMessage> _persist = Channel.CreateUnbounded<EventMessage>(new() { SingleReader = true });
    private Task? _writer;
    private long _lastId;

    public EventHub(IDbContextFactory<BlockMirrorDbContext> factory, SqliteWriteLock writeLock, JsonSerializerOptions json, TimeProvider time, ILogger<EventHub> logger)
    {
        _logger = logger;
        _factory = factory;
        _writeLock = writeLock;
        _json = json;
        _time = time;
    }

    public long LastId => Volatile.Read(ref _lastId);

    /// <summary>Reads the last id from the database and starts the writer. Called once after migrations.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await using (var db = await _factory.CreateDbContextAsync(cancellationToken))
            _lastId = await db.Events.MaxAsync(e => (long?)e.Id, cancellationToken) ?? 0;
        _writer = Task.Run(WriteLoopAsync, CancellationToken.None);
    }

    public void Publish(string name, object data)
    {
        var body = JsonSerializer.Serialize(data, data.GetType(), _json);
        lock (_lock)
        {
            var message = new EventMessage(++_lastId, name, body, _time.GetUtcNow().UtcDateTime);
            _tail.AddLast(message);
            if (_tail.Count > TailCapacity)
                _tail.RemoveFirst();
            foreach (var s in _subscribers)
                s.Writer.TryWrite(message);
            _persist.Writer.TryWrite(message);
        }
    }

    /// <summary>Every event with an id greater than <paramref name="afterId"/>, then live ones until cancelled.</summary>
    public async IAsyncEnumerable<EventMessage> SubscribeAsync(long afterId, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var live = Channel.CreateUnbounded<EventMessage>(new() { SingleReader = true });
        List<EventMessage> tail;
        lock (_lock)
        {
            _subscribers.Add(live);
            tail = [.. _tail];
        }
        try
        {
            var last = afterId;
            var tailStart = tail.Count > 0 ? tail[0].Id : long.MaxValue;
            if (last + 1 < tailStart)
            {
                await using var db = await _factory.CreateDbContextAsync(cancellationToken);
                var rows = await db.Events.AsNoTracking().Where(e => e.Id > last && e.Id < tailStart).OrderBy(e => e.Id)
                    .ToListAsync(cancellationToken);
                foreach (var row in rows)
                {
                    last = row.Id;
                    yield return new EventMessage(row.Id, row.Name, row.Data, row.Time);
                }
            }
            foreach (var m in tail)
            {
                if (m.Id <= last)
                    continue;
                last = m.Id;
                yield return m;
            }
            await foreach (var m in live.Reader.ReadAllAsync(cancellationToken))
            {
                if (m.Id <= last)
                    continue;
                last = m.Id;
                yield return m;
            }
        }
        finally
        {
            lock (_lock)
                _subscribers.Remove(live);
        }
    }

    private async Task WriteLoopAsync()
    {
        var batch = new List<EventMessage>();
        while (await _persist.Reader.WaitToReadAsync())
        {
            while (batch.Count < 512 && _persist.Reader.TryRead(out var m))
                batch.Add(m);
            try
            {
                await using var db = await _factory.CreateDbContextAsync();
                db.Events.AddRange(batch.Select(m => new EventEntity { Id = m.Id, Name = m.Name, Data = m.Data, Time = m.Time }));
                using (await _writeLock.AcquireAsync())
                    await db.SaveChangesAsync();
            }
            catch (Exception e) when (e is DbUpdateException or InvalidOperationException or Microsoft.Data.Sqlite.SqliteException)
            {
                // The events stay in the in-memory tail; a later restart simply does not replay them.
                LogEventsNotStored(_logger, e, batch[0].Id, batch[^1].Id);
            }
            batch.Clear();
        }
    }

    [LoggerMessage(1, LogLevel.Warning, "Events {First}-{Last} could not be stored; live subscribers got them, a restart will not replay them")]
    private static partial void LogEventsNotStored(ILogger logger, Exception exception, long first, long last);

    public async ValueTask DisposeAsync()
    {
        _persist.Writer.TryComplete();
        if (_writer is not null)
            await _writer;
    }
}
