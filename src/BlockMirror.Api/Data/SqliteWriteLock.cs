namespace BlockMirror.Api.Data;

/// <summary>
/// One writer at a time for the service's SQLite database. SQLite has a single write lock; a second
/// writer of the same process that finds it taken gets SQLITE_BUSY, and Microsoft.Data.Sqlite retries
/// that with 150 ms sleeps (blocking a thread). Job saves, event batches and bitmap checkpoints all
/// write, and the checkpoints run under the block layer's control lock, so one such sleep delayed a
/// job start or a READY by 150 ms (bench/README.md). Queuing the writers here costs microseconds;
/// reads need none (WAL lets them run beside the writer). Last in the lock order
/// (docs/architecture.md): its holder takes no other lock.
/// </summary>
public sealed class SqliteWriteLock
{
    private readonly SemaphoreSlim _semaphore = new(1, 1);

    /// <summary>Waits until no other writer holds the lock; dispose the result to release it.</summary>
    public async ValueTask<Held> AcquireAsync(CancellationToken cancellationToken = default)
    {
        await _semaphore.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new Held(_semaphore);
    }

    /// <summary>The lock, held until disposed.</summary>
    public readonly struct Held(SemaphoreSlim semaphore) : IDisposable
    {
        public void Dispose() => semaphore.Release();
    }
}
