namespace BlockMirror.Core;

/// <summary>
/// The block layer's control lock (QEMU's big lock): control-plane operations (node, export, bitmap,
/// transaction and job verbs, checkpoints, the journal's fold and repair) run one at a time under it;
/// the data path never takes it. First in the lock order (docs/architecture.md); a method whose
/// caller must hold it ends in <c>ControlLocked</c>. Once the layer is stopped, operations are refused
/// with <c>service-stopping</c>, except a job's own exit, which must never stay half-done.
/// </summary>
public sealed class ControlLock
{
    private readonly SemaphoreSlim _semaphore = new(1, 1);
    private volatile bool _stopped;

    /// <summary>The clean stop ran: control operations are refused from now on.</summary>
    public bool Stopped => _stopped;

    /// <summary>Runs a control-plane operation alone; refused once the layer is stopped.</summary>
    public async Task<T> RunAsync<T>(Func<Task<T>> operation, CancellationToken cancellationToken = default)
    {
        await _semaphore.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_stopped)
                throw BlockErrors.Conflict("service-stopping", "The service is stopping");
            return await operation().ConfigureAwait(false);
        }
        finally
        {
            _semaphore.Release();
        }
    }

    public Task RunAsync(Func<Task> operation, CancellationToken cancellationToken = default) =>
        RunAsync(async () =>
        {
            await operation().ConfigureAwait(false);
            return true;
        }, cancellationToken);

    /// <summary>
    /// Runs <paramref name="operation"/> under the lock even while the layer stops (a job finishing
    /// its lifecycle, a background fold that looks at <see cref="Stopped"/> itself).
    /// </summary>
    public async Task RunEvenWhileStoppingAsync(Func<Task> operation)
    {
        await _semaphore.WaitAsync().ConfigureAwait(false);
        try
        {
            await operation().ConfigureAwait(false);
        }
        finally
        {
            _semaphore.Release();
        }
    }

    /// <summary>
    /// The clean stop's entry: waits up to <paramref name="wait"/> for the lock; when it got it, the
    /// caller runs the stop, then <see cref="ExitStop"/>. False when an operation held it too long.
    /// </summary>
    internal Task<bool> TryEnterForStopAsync(TimeSpan wait, CancellationToken cancellationToken) =>
        _semaphore.WaitAsync(wait, cancellationToken);

    /// <summary>Marks the layer stopped (caller holds the lock, from <see cref="TryEnterForStopAsync"/>); false when it was already.</summary>
    internal bool MarkStoppedControlLocked()
    {
        if (_stopped)
            return false;
        _stopped = true;
        return true;
    }

    internal void ExitStop() => _semaphore.Release();
}
