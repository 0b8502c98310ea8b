namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Whether the database took its last write: set by <see cref="Data.DatabaseFailureInterceptor"/>
/// from every write of the service (the block store's, job saves, event batches), cleared by the next
/// one that commits. <c>/healthz</c> reads it (<see cref="StorageHealthCheck"/>), so a health probe
/// costs no write while the database works.
/// </summary>
public sealed class StorageHealth(TimeProvider time)
{
    /// <summary>A probe write while failed comes at most this often (a busy /healthz must not become a stream of fsyncs).</summary>
    public static readonly TimeSpan ProbeInterval = TimeSpan.FromSeconds(1);

    private readonly Lock _lock = new();
    private Exception? _databaseFailure;
    private long _lastProbeTicks = long.MinValue;

    /// <summary>The last write failure of the database, until a write commits again.</summary>
    public Exception? DatabaseFailure
    {
        get
        {
            lock (_lock)
                return _databaseFailure;
        }
    }

    public void DatabaseFailed(Exception failure)
    {
        lock (_lock)
            _databaseFailure = failure;
    }

    public void DatabaseWritten()
    {
        lock (_lock)
            _databaseFailure = null;
    }

    /// <summary>True (and counted) when a probe write may run now.</summary>
    public bool TryStartProbe()
    {
        var now = time.GetUtcNow().UtcTicks;
        lock (_lock)
        {
            if (_lastProbeTicks != long.MinValue && now - _lastProbeTicks < ProbeInterval.Ticks)
                return false;
            _lastProbeTicks = now;
            return true;
        }
    }
}
