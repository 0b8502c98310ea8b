using BlockMirror.Core.Jobs;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.State;

/// <summary>
/// Repair of a failed bitmap journal (a full or failing disk under the database). While it cannot be
/// written, a write that needs a new durable granule is refused before it reaches the image (the
/// journal is write-ahead); writes to granules already durable go on. Once the disk takes writes
/// again, a repair checkpoints every persistent bitmap and restarts the journal on a fresh segment,
/// as a start does: the writes go on without a restart of the service.
/// </summary>
public sealed partial class BitmapPersistence
{
    /// <summary>The first retry after a failure; each failed retry doubles the wait up to <see cref="MaxRepairDelay"/>.</summary>
    private static readonly TimeSpan MinRepairDelay = TimeSpan.FromMilliseconds(250);

    private static readonly TimeSpan MaxRepairDelay = TimeSpan.FromSeconds(30);

    /// <summary>An on-demand retry (<see cref="RequestJournalRepair"/>) comes at most this often: a repair checkpoints every persistent bitmap.</summary>
    private static readonly TimeSpan OnDemandRepairGap = TimeSpan.FromSeconds(1);

    private readonly Lock _repairLock = new();
    private AsyncSignal? _repairWake;
    private bool _repairRunning;
    private long _lastRepairTicks;

    /// <summary>Why the last repair of the journal failed (null after a success, or before any attempt).</summary>
    public string? LastJournalRepairError { get; private set; }

    /// <summary>
    /// Asks for a repair attempt now (a health probe does, so that freed space is noticed at once),
    /// at most once every <see cref="OnDemandRepairGap"/>; nothing when the journal works.
    /// </summary>
    public void RequestJournalRepair()
    {
        if (_journal?.Failure is null)
            return;
        AsyncSignal wake;
        lock (_repairLock)
        {
            if (time.GetUtcNow().UtcTicks - _lastRepairTicks < OnDemandRepairGap.Ticks)
                return;
            wake = _repairWake ??= new AsyncSignal(time);
        }
        QueueJournalRepair();
        wake.Set();
    }

    /// <summary>
    /// Repairs a failed journal now (nothing when it works): with every node's writes quiesced, as at
    /// load, every persistent bitmap is checkpointed through the journal's last sequence, then the
    /// journal drops its segments (the checkpoints cover them) and starts a fresh one after that
    /// sequence, so a recovery never meets a gap. Throws (and the journal stays failed) while the
    /// database or the journal's folder cannot be written.
    /// </summary>
    public async Task RepairJournalControlLockedAsync(CancellationToken cancellationToken)
    {
        if (_journal is not { Failure: not null } journal)
            return;
        lock (_repairLock)
            _lastRepairTicks = time.GetUtcNow().UtcTicks;
        using (await nodes.QuiesceAllAsync(cancellationToken).ConfigureAwait(false))
        {
            var through = journal.LastSequence;
            await CheckpointControlLockedAsync(PersistentBitmapsOf(nodes.Nodes), cleanStop: false, through, cancellationToken).ConfigureAwait(false);
            await journal.RestartAsync(through + 1, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The journal failed (its event, on a thread-pool thread): retry the repair with a growing wait until it works.</summary>
    private void QueueJournalRepair()
    {
        lock (_repairLock)
        {
            if (_repairRunning)
                return;
            _repairRunning = true;
            _repairWake ??= new AsyncSignal(time);
        }
        LogJournalFailed(logger, _journal?.Failure);
        _ = Task.Run(RepairLoopAsync);
    }

    private async Task RepairLoopAsync()
    {
        var delay = MinRepairDelay;
        try
        {
            while (!control.Stopped && _journal?.Failure is not null)
            {
                await _repairWake!.WaitAsync(delay).ConfigureAwait(false);
                if (control.Stopped || _journal?.Failure is null)
                    break;
                try
                {
                    await control.RunAsync(() => RepairJournalControlLockedAsync(CancellationToken.None)).ConfigureAwait(false);
                    LastJournalRepairError = null;
                    LogJournalRepaired(logger);
                }
                catch (Exception e)
                {
                    // Still full or failing; the writes that need the journal stay refused meanwhile.
                    LastJournalRepairError = e.Message;
                    LogRepairFailed(logger, e, delay.TotalSeconds);
                }
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRepairDelay.Ticks));
            }
        }
        finally
        {
            lock (_repairLock)
                _repairRunning = false;
            // A failure announced while this loop was leaving found it still running: start again.
            if (!control.Stopped && _journal?.Failure is not null)
                QueueJournalRepair();
        }
    }

    [LoggerMessage(20, LogLevel.Error, "The bitmap journal cannot be written; writes that need a new durable granule are refused until it is repaired")]
    private static partial void LogJournalFailed(ILogger logger, Exception? exception);

    [LoggerMessage(21, LogLevel.Warning, "Repairing the bitmap journal failed; retrying after {DelaySeconds} s")]
    private static partial void LogRepairFailed(ILogger logger, Exception exception, double delaySeconds);

    [LoggerMessage(22, LogLevel.Information, "The bitmap journal was repaired: every persistent bitmap checkpointed, a fresh segment started")]
    private static partial void LogJournalRepaired(ILogger logger);
}
