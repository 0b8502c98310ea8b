namespace BlockMirror.Api.Data;

/// <summary>
/// One writer at a time for the service's SQLite database. SQLite has a single write lock; a second
/// writer of the same process that finds it taken gets SQLITE_BUSY, and Microsoft.Data.Sqlite retries
/// that with 150 ms sleeps (blocking a thread). Job saves, event batches and bitmap checkpoints all
/// write, and the checkpoints run under the block layer's control lock, so one such sleep delayed a
/// job start or a READY by 150 ms (bench/README.md). Queuing the writers here costs microseconds;
/// reads need no gate (WAL lets them run beside the writer).
/// </summary>
public sealed class SqliteWriteGate
{
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>Waits for the write turn; dispose the result to hand it on.</summary>
    public async ValueTask<Turn> EnterAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new Turn(_gate);
    }

    /// <summary>The write turn: releasing it lets the next writer in.</summary>
    public readonly struct Turn(SemaphoreSlim gate) : IDisposable
    {
        public void Dispose() => gate.Release();
    }
}
