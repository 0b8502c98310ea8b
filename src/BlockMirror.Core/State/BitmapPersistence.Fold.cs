using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.State;

/// <summary>The fold: sealed journal segments become part of the stored checkpoints, then go.</summary>
public sealed partial class BitmapPersistence
{
    private int _foldQueued;
    private long _failedFolds;

    /// <summary>The last failure of a background fold of the journal into the checkpoints (it is retried at the next one).</summary>
    public string? LastFoldError { get; private set; }

    /// <summary>Background folds that failed since the start (an operator must act while they do: the journal grows).</summary>
    public long FailedFolds => Interlocked.Read(ref _failedFolds);

    /// <summary>Folds the sealed journal segments into the checkpoints now (the journal also asks for it when one seals).</summary>
    public async Task FoldJournalControlLockedAsync()
    {
        if (_journal is not null)
            await FoldControlLockedAsync(_journal).ConfigureAwait(false);
    }

    private void QueueFold()
    {
        if (Interlocked.Exchange(ref _foldQueued, 1) == 0)
            _ = Task.Run(() => control.RunEvenWhileStoppingAsync(FoldQueuedControlLockedAsync));
    }

    /// <summary>
    /// Folds the sealed journal segments into the stored checkpoints and drops them. It works from
    /// the durable state only (stored content + entries), never from the bitmaps in memory, so it
    /// changes nothing a crash recovery would find and needs no quiesce; it takes the control lock
    /// so no checkpoint of the same rows runs meanwhile.
    /// </summary>
    private async Task FoldQueuedControlLockedAsync()
    {
        try
        {
            Interlocked.Exchange(ref _foldQueued, 0);
            if (control.Stopped || _journal is null)
                return;
            await FoldControlLockedAsync(_journal).ConfigureAwait(false);
            LastFoldError = null;
        }
        catch (Exception e)
        {
            // The segments stay and are folded by the next attempt (or replayed by the next start).
            LastFoldError = e.Message;
            Interlocked.Increment(ref _failedFolds);
            LogFoldFailed(logger, e, _journal?.LastSequence ?? 0);
        }
    }

    private async Task FoldControlLockedAsync(IBitmapJournal journal)
    {
        if (await journal.ReadSealedAsync().ConfigureAwait(false) is not { } sealedPart)
            return;
        var sizes = (await store.LoadNodesAsync().ConfigureAwait(false)).ToDictionary(n => n.Name, n => n.Size, StringComparer.Ordinal);
        var byBitmap = sealedPart.Entries.GroupBy(e => (e.Node, e.Bitmap)).ToDictionary(g => g.Key, g => g.ToList());
        var updates = new List<BitmapRecord>();
        foreach (var row in await store.LoadBitmapsAsync().ConfigureAwait(false))
        {
            if (!row.Persistent || row.Inconsistent || row.JournalSequence is not { } covered || covered >= sealedPart.Through)
                continue;
            if (!byBitmap.TryGetValue((row.Node, row.Name), out var entries) || !entries.Any(e => e.Sequence > covered))
                continue;
            if (!sizes.TryGetValue(row.Node, out var size))
                continue;
            var folded = BitmapFold.Fold(row, size, entries);
            if (folded is null)
                LogFoldedInconsistent(logger, row.Node, row.Name);
            updates.Add(folded is null
                ? row with { Inconsistent = true, InconsistentReason = OutsideTheBitmap, JournalSequence = sealedPart.Through }
                : row with { Content = folded, JournalSequence = sealedPart.Through });
        }
        if (updates.Count > 0)
            await store.SaveBitmapsAsync(updates).ConfigureAwait(false);
        await journal.ReleaseSealedAsync(sealedPart.Through).ConfigureAwait(false);
    }

    [LoggerMessage(10, LogLevel.Error, "Folding the bitmap journal into the checkpoints failed (journal at sequence {Sequence}); its segments stay and the next fold retries")]
    private static partial void LogFoldFailed(ILogger logger, Exception exception, long sequence);

    [LoggerMessage(11, LogLevel.Warning, "Bitmap '{Node}/{Bitmap}': a journal entry lies outside the bitmap; stored inconsistent")]
    private static partial void LogFoldedInconsistent(ILogger logger, string node, string bitmap);
}
