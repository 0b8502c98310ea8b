using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>The load: nodes reopened, persistent bitmaps restored where the proof rules allow it.</summary>
public sealed partial class BitmapPersistence
{
    /// <summary>Problems met while loading (images that could not be reopened, journal damage).</summary>
    public List<string> LoadFailures { get; } = [];

    /// <summary>
    /// Per bitmap restored after a crash at the last load, the granules its replay marked only because
    /// their extent was hot in the activity log: the most a crash added beyond what was written (at most
    /// <see cref="BitmapActivityLogOptions.HotExtents"/> extents' worth).
    /// </summary>
    public List<(string Node, string Bitmap, long Granules, long Bytes)> RecoverySuperset { get; } = [];

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
            foreach (var adopted in ImageBitmaps.Adopt(node, time.GetUtcNow().UtcDateTime, InconsistentAtLoad))
                restored.Add((node, adopted));
            await StoreInImageAtLoadAsync(node, cancellationToken).ConfigureAwait(false);
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

    /// <summary>
    /// What was restored goes back into the image at once, in use (the node is open): after a crash the
    /// image then holds the record's bits (checkpoint + journal), and image and record agree. Before the
    /// load's checkpoint, which stamps the image as it is after this write.
    /// </summary>
    private async Task StoreInImageAtLoadAsync(BlockNode node, CancellationToken cancellationToken)
    {
        try
        {
            await ImageBitmaps.StoreAsync(node, b => b.Serialize(), inUse: true, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or BlockException)
        {
            // The image keeps its bitmaps in use (marked at open): nobody trusts their stale bits.
            LoadFailures.Add($"node '{node.Name}': its bitmaps could not be stored in the image ({e.Message}); they stay in use there");
        }
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
                if (row.JournalSequence is { } after)
                {
                    if (!BitmapFold.Apply(bitmap, entries, after, markHot: true, out var hot))
                        reason = OutsideTheBitmap;
                    else if (row.InUse)
                        RecoverySuperset.Add((node.Name, row.Name, hot, Math.Min(hot * row.Granularity, node.Size)));
                }
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
        if (ImageEvidence(node, row) is { } evidence)
            return evidence.Length == 0 ? null : evidence;
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

    /// <summary>
    /// For a bitmap the image holds too (a qcow2 version 3 image opened read-write), what the image
    /// says as found at open, before the open marked it in use:
    /// <list type="bullet">
    /// <item>after a clean stop the service stored the bitmap there with in-use clear. Found so, with
    /// the record's granularity and bits, the bitmap is exact whatever else changed the file: every
    /// program that writes qcow2 data either updates the stored bitmaps (QEMU marks them in use, and
    /// stores them again at close) or clears the image's "bitmaps" autoclear bit. Returns "" (proven)
    /// then. Missing, in use, or with other bits or granularity, someone changed it while the service
    /// was stopped (<c>qemu-img bitmap --remove/--clear/--merge</c>, a QEMU that wrote the image): the reason.</item>
    /// <item>after a crash the service had it in use in the image. Missing, or no longer in use,
    /// someone removed or stored it after the crash: the reason. Still in use: null, and the journal's
    /// rules decide, the record being the authority.</item>
    /// </list>
    /// Null for images that cannot hold bitmaps: the other rules decide.
    /// </summary>
    private static string? ImageEvidence(BlockNode node, BitmapRecord row)
    {
        if (ImageBitmaps.StorageOf(node) is not { } image)
            return null;
        var found = image.BitmapsAtOpen.FirstOrDefault(b => b.Name == row.Name);
        if (row.InUse)
        {
            if (found is null)
                return "it was removed from the image after the service stopped uncleanly";
            if (!found.InUse)
                return "another program stored it in the image after the service stopped uncleanly";
            return null;
        }
        if (found is null)
            return "it was removed from the image while the service was stopped";
        if (found.InUse)
            return "the image holds it in use: a program opened the image read-write while the service was stopped and did not store it";
        if (found.Granularity != row.Granularity)
            return "its granularity in the image differs from the service's record";
        byte[] stored;
        try
        {
            stored = image.ReadStoredBitmap(row.Name);
        }
        catch (BlockException e)
        {
            return $"its bits in the image cannot be read: {e.Message}";
        }
        if (row.Content is not { } content || !stored.AsSpan().SequenceEqual(content))
            return "its bits in the image differ from the service's record: the image was changed while the service was stopped";
        return "";
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
        var folded = BitmapFold.Fold(row, nodeSize, entries, markHot: true);
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
