namespace BlockMirror.Core.Nodes;

/// <summary>
/// Lets data writes run concurrently while a control operation can stop new ones and wait
/// for those in flight (QEMU's drained section). Writes enter and exit; a quiesce blocks
/// entries and completes when the last in-flight write has exited. Quiesces nest.
/// </summary>
public sealed class QuiesceGate
{
    private readonly Lock _lock = new();
    private int _active;
    private int _quiesceDepth;
    private TaskCompletionSource? _drained;
    private TaskCompletionSource _resumed = NewTcs();

    /// <summary>Number of writes currently inside the gate.</summary>
    public int Active => Volatile.Read(ref _active);

    /// <summary>True while at least one quiesce is in force.</summary>
    public bool IsQuiesced => Volatile.Read(ref _quiesceDepth) > 0;

    /// <summary>Enters the gate; waits while the gate is quiesced.</summary>
    public ValueTask EnterAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            if (_quiesceDepth == 0)
            {
                _active++;
                return ValueTask.CompletedTask;
            }
        }
        return EnterSlowAsync(cancellationToken);
    }

    private async ValueTask EnterSlowAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_quiesceDepth == 0)
                {
                    _active++;
                    return;
                }
                wait = _resumed.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Leaves the gate; completes a pending drain when the last write leaves.</summary>
    public void Exit()
    {
        TaskCompletionSource? drained = null;
        lock (_lock)
        {
            _active--;
            if (_active == 0 && _drained is not null)
            {
                drained = _drained;
                _drained = null;
            }
        }
        drained?.TrySetResult();
    }

    /// <summary>Blocks new writes and waits until none is in flight. Dispose the result to resume.</summary>
    public async Task<IDisposable> QuiesceAsync(CancellationToken cancellationToken = default)
    {
        Task? wait = null;
        lock (_lock)
        {
            _quiesceDepth++;
            if (_active > 0)
            {
                _drained ??= NewTcs();
                wait = _drained.Task;
            }
        }
        if (wait is not null)
        {
            try
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                Resume();
                throw;
            }
        }
        return new Releaser(this);
    }

    private void Resume()
    {
        TaskCompletionSource? resumed = null;
        lock (_lock)
        {
            if (--_quiesceDepth == 0)
            {
                resumed = _resumed;
                _resumed = NewTcs();
            }
        }
        resumed?.TrySetResult();
    }

    private static TaskCompletionSource NewTcs() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private sealed class Releaser(QuiesceGate gate) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
                gate.Resume();
        }
    }
}
