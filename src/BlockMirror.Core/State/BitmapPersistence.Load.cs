using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>The load: nodes reopened, persistent bitmaps restored where the proof rules allow it.</summary>
public sealed partial class BitmapPersistence
{
    /// <summary>Problems met while loading (images that could not be reopened, journal damage).</summary>
    public List<string> LoadFailures { get; } = [];

    /// <summary>Why each bitmap restored inconsistent at the last load ("node/bitmap: reason").</summary>
    public List<string> InconsistentAtLoad { get; } = [];

    /// <summary>
    /// Rebuilds the state from the store: nodes reopened (by <paramref name="reopenAsync"/>), persistent
    /// bitmaps restored from their last checkpoint plus the journal entries after it, or found
    /// inconsistent when that cannot be proven (see <see cref="Unprovable"/>). Every restored bitmap is
    /// checkpointed again at once, so the old journal segments can go and the new run journals from a
    /// clean base. Non-persistent bitmaps vanish with the process, as in QEMU.
    /// </summary>
    internal async Task LoadControlLockedAsync(Func<NodeRecord, CancellationToken, Task<BlockNode>> reopenAsync, CancellationToken cancellationToken)
    {
        var recovery = _journal is null ? JournalRecovery.Empty : await _journal.RecoverAsync(cancellationToken).ConfigureAwait(false);
        foreach (var damage in recovery.Damage)
            LoadFailures.Add($"bitmap journal: {damage.Description}");
        var journaled = recovery.Entries
            .GroupBy(e => (e.Node, e.Bitmap))
            .ToDictionary(g => g.Key, g => (IReadOnlyList<JournalEntry>)[.. g]);
        var allRows = await store.LoadBitmapsAsync(cancellationToken).ConfigureAwait(false);
        // Sequences go on from the highest any checkpoint covers, even if the journal's files were lost.
        var through = Math.Max(recovery.LastSequence, allRows.Max(r => r.JournalSequence) ?? 0);
        var bitmapRows = allRows
            .GroupBy(b => b.Node, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.OrderBy(b => b.CreatedAt).ToList(), StringComparer.Ordinal);
        var restored = new List<(BlockNode Node, DirtyBitmap Bitmap)>();
        var kept = new List<BitmapRecord>();
        var drop = new List<(string, string)>();
        foreach (var record in await store.LoadNodesAsync(cancellationToken).ConfigureAwait(false))
        {
            var rows = bitmapRows.GetValueOrDefault(record.Name) ?? [];
            BlockNode node;
            try
            {
                node = await reopenAsync(record, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is BlockException or IOException or UnauthorizedAccessException)
            {
                // The record stays: an operator may bring the image back and restart. Its bitmaps keep
                // their journal entries, folded into their content, since the old segments go.
                LoadFailures.Add($"node '{record.Name}': {e.Message}");
                kept.AddRange(rows.Where(r => r.Persistent).Select(r => FoldForLater(r, record.Size, journaled, through)));
                continue;
            }
            foreach (var row in rows)
            {
                if (!row.Persistent)
                {
                    drop.Add((row.Node, row.Name));
                    continue;
                }
                var bitmap = RestoreBitmap(node, row, journaled.GetValueOrDefault((row.Node, row.Name)) ?? [], recovery);
                node.AddBitmap(bitmap);
                restored.Add((node, bitmap));
            }
            nodes.AddControlLocked(node);
        }
        if (drop.Count > 0)
            await store.DeleteBitmapsAsync(drop, cancellationToken).ConfigureAwait(false);
        if (kept.Count > 0)
            await store.SaveBitmapsAsync(kept, cancellationToken).ConfigureAwait(false);
        // No write runs yet, so the snapshot needs no quiesce; the checkpoints cover every recovered entry.
        await CheckpointControlLockedAsync(restored, cleanStop: false, through, cancellationToken).ConfigureAwait(false);
        if (_journal is not null)
            await _journal.StartAsync(through + 1, cancellationToken).ConfigureAwait(false);
    }

    private DirtyBitmap RestoreBitmap(BlockNode node, BitmapRecord row, IReadOnlyList<JournalEntry> entries, JournalRecovery recovery)
    {
        var bitmap = new DirtyBitmap(row.Name, node.Size, row.Granularity, persistent: true, disabled: row.Disabled) { CreatedAt = row.CreatedAt };
        var reason = Unprovable(node, row, recovery);
        if (reason is null)
        {
            try
            {
                bitmap.Deserialize(row.Content);
                if (row.JournalSequence is { } after && !BitmapFold.Apply(bitmap, entries, after))
                    reason = OutsideTheBitmap;
            }
            catch (ArgumentException)
            {
                reason = "the stored content does not fit the image";
            }
        }
        if (reason is not null)
        {
            // QEMU: a bitmap that cannot be trusted is kept, disabled, and can only be removed.
            bitmap.Clear();
            bitmap.MarkInconsistent(reason);
            bitmap.Disabled = true;
            InconsistentAtLoad.Add($"{node.Name}/{row.Name}: {reason}");
        }
        return bitmap;
    }

    /// <summary>
    /// Why a stored persistent bitmap cannot be proven exact for the image as it is now, or null when
    /// it can. The rule:
    /// <list type="bullet">
    /// <item>never: a bitmap already inconsistent, one without stored content, or an image whose size
    /// or (raw) inode differs from the checkpoint's (resized, or replaced by another file);</item>
    /// <item>after a clean stop (in-use clear): the image's mtime must equal the one stamped at the
    /// stop, when the service had flushed and closed it: any later change was made by someone else;</item>
    /// <item>after a crash (in-use set): the journal proves every granule the service wrote or was
    /// writing (write-ahead), so the content is checkpoint + journal, provided a journal covered the
    /// bitmap, and the image was not modified by anyone else since: its mtime must not be older than
    /// at the checkpoint (a restored older copy) nor newer than the last moment the dead service could
    /// have written it (its last sign of life + <see cref="FileBitmapJournalOptions.AliveInterval"/> +
    /// margin). A modification by someone else within that margin of the crash cannot be told from the
    /// service's own last writes; that is the limit of what mtimes prove. And the journal must be
    /// whole above the checkpoint: a damaged or missing segment (<see cref="JournalRecovery.Damage"/>)
    /// may have held entries of any bitmap whose checkpoint covers less.</item>
    /// </list>
    /// Remote (nbd) images have no stamp beyond their size: what others do to a remote export is never visible here.
    /// </summary>
    private string? Unprovable(BlockNode node, BitmapRecord row, JournalRecovery recovery)
    {
        if (row.Inconsistent)
            return row.InconsistentReason ?? "it was inconsistent already";
        if (row.Content is null)
            return "no content was stored";
        if (row.ImageSize is { } size && size != node.Size)
            return "the image changed size";
        ImageStamp? stamp = null;
        if (node.Path is not null)
        {
            // The file just opened (fstat), which is what the node will read and write.
            stamp = ImageStamp.Of(node.Image);
            if (stamp is null)
                return "the image cannot be examined";
            if (row.ImageInode is { } inode && inode != stamp.Value.Inode)
                return "the image was replaced by another file";
        }
        if (!row.InUse)
        {
            if (stamp is { } s && row.ImageMtimeUtc is { } stopped && s.ModifiedUtc != Utc(stopped))
                return "the image was modified while the service was stopped";
            return null;
        }
        if (row.JournalSequence is null || _journal is null)
            return "the service stopped uncleanly and no journal covered the bitmap";
        if (recovery.DamageAfter(row.JournalSequence.Value) is { } damage)
            return $"the bitmap journal is damaged: {damage.Description}";
        if (stamp is not { } now)
            return null;
        if (row.ImageMtimeUtc is { } checkpointed && now.ModifiedUtc < Utc(checkpointed))
            return "the image is older than at the last checkpoint";
        if (recovery.WroteUntilUtc is not { } until)
            return "the bitmap journal's files are missing (the last run left no sign of life)";
        if (now.ModifiedUtc > until)
            return "the image was modified after the service stopped";
        return null;
    }

    private static DateTime Utc(DateTime value) => DateTime.SpecifyKind(value, DateTimeKind.Utc);

    /// <summary>
    /// A row of a node that could not be reopened, with the journal folded into its content (the old
    /// segments are about to go). After a crash it becomes inconsistent: the journal's sign of life
    /// bounds writes to images of this run only, and a later run cannot prove what happened meanwhile.
    /// </summary>
    private static BitmapRecord FoldForLater(BitmapRecord row, long nodeSize, Dictionary<(string, string), IReadOnlyList<JournalEntry>> journaled, long through)
    {
        const string NotReopened = "the image could not be reopened at a restart after an unclean stop";
        if (row.Inconsistent || row.JournalSequence is null)
            return row.Inconsistent || !row.InUse ? row : row with { Inconsistent = true, InconsistentReason = NotReopened };
        var entries = journaled.GetValueOrDefault((row.Node, row.Name)) ?? [];
        var folded = BitmapFold.Fold(row, nodeSize, entries);
        return row with
        {
            Content = folded ?? row.Content,
            Inconsistent = row.InUse || folded is null,
            InconsistentReason = folded is null ? OutsideTheBitmap : row.InUse ? NotReopened : null,
            JournalSequence = Math.Max(through, row.JournalSequence.Value),
        };
    }

    /// <summary>Why a bitmap whose journal names granules past its end cannot be trusted.</summary>
    private const string OutsideTheBitmap = "a journal entry lies outside the bitmap";
}
