using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Transactions;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.State;

/// <summary>
/// Persistent bitmaps made crash-exact: the journal hook on every node's write path (write-ahead),
/// checkpoints in the store (content, the journal sequence it covers, the image's stamp), the proof
/// rules that decide at load whether a stored bitmap is exact (BitmapPersistence.Load.cs), the fold
/// of sealed journal segments into the checkpoints (BitmapPersistence.Fold.cs), the repair of a
/// failed journal (BitmapPersistence.Repair.cs) and the clean stop's last checkpoint
/// (BitmapPersistence.Stop.cs). Non-persistent bitmaps are stored too, flags only.
/// </summary>
public sealed partial class BitmapPersistence(
    IBlockStore store, ControlLock control, NodeRegistry nodes, ImageReplacementCheck replacements, TimeProvider time,
    ILogger<BitmapPersistence> logger)
{
    private IBitmapJournal? _journal;
    private BitmapDurability? _durability;

    /// <summary>
    /// The write-ahead journal of persistent bitmaps (null = none, and then, as in QEMU, a persistent
    /// bitmap is only exact after a clean stop). Set once, before the layer loads.
    /// </summary>
    public IBitmapJournal? Journal
    {
        get => _journal;
        internal set
        {
            _journal = value;
            _durability = value is null ? null : new BitmapDurability(value, _activityLog);
            if (value is not null)
            {
                value.SegmentSealed += QueueFold;
                value.WriteFailed += QueueJournalRepair;
            }
        }
    }

    private BitmapActivityLogOptions _activityLog = new();

    /// <summary>The activity log's extent size and hot bound (set before the layer loads, like <see cref="Journal"/>).</summary>
    public BitmapActivityLogOptions ActivityLog
    {
        get => _activityLog;
        internal set
        {
            _activityLog = value;
            if (_journal is { } journal)
                _durability = new BitmapDurability(journal, value);
        }
    }

    /// <summary>The activity log's counters (zero without a journal).</summary>
    public ActivityLogStatistics ActivityLogStatistics => _durability?.Statistics ?? default;

    /// <summary>Extents of <paramref name="bitmap"/> hot now (0 without a journal).</summary>
    public int HotExtentsOf(DirtyBitmap bitmap) => _durability?.HotExtentsOf(bitmap) ?? 0;

    /// <summary>
    /// Whether a bitmap is a running job's working bitmap (the job clears bits before their copies are
    /// done, so only what is durable of it may be checkpointed); the job manager answers.
    /// </summary>
    internal Func<BlockNode, DirtyBitmap, bool> IsJobWorkingBitmap { get; set; } = (_, _) => false;

    /// <summary>With a journal, a persistent bitmap keeps a durability shadow of its own size beside it.</summary>
    internal bool KeepsShadows => _durability is not null;

    /// <summary>Puts the journal on <paramref name="node"/>'s write path (before the node can be reached).</summary>
    internal void Attach(BlockNode node)
    {
        if (_durability is { } durability)
            node.EnsureBitmapRangeDurable = durability.EnsureAsync;
    }

    /// <summary>Marks the nodes whose image was replaced, and stores their bitmaps' new state.</summary>
    public async Task CheckImagesControlLockedAsync(IEnumerable<BlockNode> candidates, CancellationToken cancellationToken)
    {
        var replaced = candidates.Where(replacements.DetectControlLocked).ToList();
        var records = replaced
            .SelectMany(n => n.Bitmaps.Where(b => b.Persistent).Select(b => RecordOf(n, b, inUse: true, content: null)))
            .ToList();
        if (records.Count > 0)
            await store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Stores a prepared transaction's outcome in one store transaction (before commit: the removed
    /// bitmaps are still on their nodes, busy): the removed rows deleted, every other touched bitmap
    /// checkpointed. All of it or nothing reaches the disk. Writes are quiesced by the caller.
    /// </summary>
    internal async Task StoreTransactionControlLockedAsync(TransactionContext context, CancellationToken cancellationToken)
    {
        var removed = context.Removed.ToHashSet();
        var touched = context.Touched
            .Where(t => !removed.Contains((t.Node.Name, t.Bitmap.Name)) && t.Node.FindBitmap(t.Bitmap.Name) == t.Bitmap)
            .ToList();
        if (touched.Count == 0 && removed.Count == 0)
            return;
        // The image first (QEMU removes a persistent bitmap from the image at once): see ImageBitmaps.SyncDirectoryAsync.
        foreach (var node in touched.Select(t => t.Node).Concat(context.Removed.Select(r => nodes.FindNode(r.Node)).OfType<BlockNode>()).Distinct())
        {
            var removedHere = context.Removed.Where(r => r.Node == node.Name).Select(r => r.Name).ToList();
            await ImageBitmaps.SyncDirectoryAsync(node, removedHere, cancellationToken).ConfigureAwait(false);
        }
        var (records, contents) = BuildCheckpoint(touched, cleanStop: false, _journal?.LastSequence);
        await store.SaveBitmapChangesAsync(records, context.Removed, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>
    /// A node just created (blockdev-add): the bitmaps its image held (a qcow2 image QEMU wrote) become
    /// its persistent bitmaps, checkpointed at once. Nothing can write the node yet (an export or a job
    /// needs the control lock), so no quiesce is needed.
    /// </summary>
    internal async Task AdoptImageBitmapsControlLockedAsync(BlockNode node, CancellationToken cancellationToken)
    {
        var adopted = ImageBitmaps.Adopt(node, time.GetUtcNow().UtcDateTime, []);
        if (adopted.Count == 0)
            return;
        // The open marked them in use already.
        await CheckpointControlLockedAsync([.. adopted.Select(b => (node, b))], cleanStop: false, _journal?.LastSequence, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Persists a bitmap a job changed (flags, and the content it leaves): with the node's writes
    /// quiesced, checkpoints every persistent bitmap of the node (after a pivot their image changed).
    /// </summary>
    public async Task CheckpointNodeControlLockedAsync(BlockNode node, DirtyBitmap bitmap, CancellationToken cancellationToken = default)
    {
        using (await node.QuiesceGate.QuiesceAsync(cancellationToken).ConfigureAwait(false))
        {
            var bitmaps = node.Bitmaps.Where(b => b.Persistent).Select(b => (node, b)).ToList();
            if (!bitmap.Persistent || !bitmaps.Any(b => ReferenceEquals(b.b, bitmap)))
                bitmaps.Add((node, bitmap));
            await CheckpointControlLockedAsync(bitmaps, cleanStop: false, _journal?.LastSequence, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A pivot, stored whole (the device's writes quiesced): the device's record on its new image, its
    /// persistent bitmaps checkpointed with that image's stamp, the consumed node gone. Stored in two
    /// steps, a crash in between would restart the device on the new image with checkpoints stamped
    /// for the old one: inconsistent bitmaps.
    /// </summary>
    internal async Task StorePivotControlLockedAsync(BlockNode device, string consumedNode, CancellationToken cancellationToken)
    {
        var bitmaps = device.Bitmaps.Where(b => b.Persistent).Select(b => (device, b)).ToList();
        // The new image names the device's bitmaps (in use) before the record says they live there.
        await ImageBitmaps.SyncDirectoryAsync(device, [], cancellationToken).ConfigureAwait(false);
        var (records, contents) = BuildCheckpoint(bitmaps, cleanStop: false, _journal?.LastSequence);
        await store.SavePivotAsync(NodeRecord.Of(device), records, consumedNode, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>
    /// Stores bitmaps: flags only for non-persistent ones; for persistent ones a checkpoint (full
    /// content, the journal sequence it covers, the image's stamp) in one transaction. Callers have the
    /// nodes' writes quiesced (or there are none), and read <paramref name="through"/> under that
    /// quiesce: every entry up to it belongs to a write whose marks are in the snapshot. A persistent
    /// bitmap a running job works from is stored as what is already durable of it, not as it is in
    /// memory: the job clears bits before their copies are done, and only its exit may make that durable.
    /// </summary>
    private async Task CheckpointControlLockedAsync(IReadOnlyCollection<(BlockNode Node, DirtyBitmap Bitmap)> bitmaps, bool cleanStop, long? through, CancellationToken cancellationToken)
    {
        if (bitmaps.Count == 0)
            return;
        var (records, contents) = BuildCheckpoint(bitmaps, cleanStop, through);
        await store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
        Checkpointed(contents);
    }

    /// <summary>The records of a checkpoint (see <see cref="CheckpointControlLockedAsync"/>), and the contents that become the durable base once stored.</summary>
    private (List<BitmapRecord> Records, List<(DirtyBitmap, byte[])> Contents) BuildCheckpoint(
        IReadOnlyCollection<(BlockNode Node, DirtyBitmap Bitmap)> bitmaps, bool cleanStop, long? through)
    {
        var records = new List<BitmapRecord>(bitmaps.Count);
        var contents = new List<(DirtyBitmap, byte[])>();
        var stamps = new Dictionary<BlockNode, ImageStamp?>();
        foreach (var node in bitmaps.Select(b => b.Node).Distinct())
            replacements.DetectControlLocked(node);
        foreach (var (node, bitmap) in bitmaps)
        {
            var jobHeld = IsJobWorkingBitmap(node, bitmap);
            var content = !bitmap.Persistent ? null : jobHeld ? _durability?.DurableContent(bitmap) : bitmap.Serialize();
            // A job's working bitmap is disabled only so that the job, not the node, marks it; it was
            // enabled (a mirror takes no other), and a crash must not leave it disabled for good.
            // Without content this is no checkpoint, so it cannot count as a clean stop's either.
            var record = RecordOf(node, bitmap, inUse: !cleanStop || bitmap.Inconsistent || content is null, content) with { Disabled = bitmap.Disabled && !jobHeld };
            if (content is null)
            {
                records.Add(record);
                continue;
            }
            if (!stamps.TryGetValue(node, out var stamp))
            {
                // The open file's stamp (fstat), never the path's: a file renamed over the path is not
                // the one these bitmaps describe, and the path may not even resolve any more.
                stamps[node] = stamp = node.Path is null ? null : ImageStamp.Of(node.Image);
            }
            records.Add(record with
            {
                JournalSequence = _journal is null ? null : through,
                ImageSize = node.Size,
                ImageMtimeUtc = stamp?.ModifiedUtc,
                ImageInode = stamp?.Inode,
            });
            // A job's working bitmap is stored as its shadow, which stays what it is; but the checkpoint
            // covers the journal through this sequence, so its hot extents must go cold all the same.
            if (!bitmap.Inconsistent)
                contents.Add((bitmap, content));
        }
        return (records, contents);
    }

    /// <summary>Stored: from now on the journal needs only what these contents lack.</summary>
    private void Checkpointed(List<(DirtyBitmap, byte[])> contents)
    {
        foreach (var (bitmap, content) in contents)
            _durability?.Checkpointed(bitmap, content);
    }

    private static BitmapRecord RecordOf(BlockNode node, DirtyBitmap bitmap, bool inUse, byte[]? content) =>
        new(node.Name, bitmap.Name, bitmap.Granularity, bitmap.Persistent, bitmap.Disabled,
            bitmap.Inconsistent, inUse, content, null, null, bitmap.CreatedAt) { InconsistentReason = bitmap.InconsistentReason };

    private static List<(BlockNode, DirtyBitmap)> PersistentBitmapsOf(IEnumerable<BlockNode> of) =>
        [.. of.SelectMany(n => n.Bitmaps.Where(b => b.Persistent).Select(b => (n, b)))];
}
