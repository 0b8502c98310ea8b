using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Nodes;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.State;

/// <summary>The clean stop of one node: its image flushed and closed, its persistent bitmaps checkpointed with in-use cleared.</summary>
public sealed partial class BitmapPersistence
{
    /// <summary>
    /// With the node's writes quiesced (waiting at most <paramref name="stopWait"/>), flush and close its
    /// image, then checkpoint its persistent bitmaps with the in-use flag cleared and the image's stamp.
    /// Whatever cannot be done is added to <paramref name="failures"/> and leaves the bitmaps' last
    /// checkpoint with in-use set: the next start restores them from the journal (exact) or finds them
    /// inconsistent.
    /// </summary>
    internal async Task StopNodeControlLockedAsync(BlockNode node, TimeSpan stopWait, List<string> failures, CancellationToken cancellationToken)
    {
        IDisposable quiesce;
        using (var bounded = new CancellationTokenSource(stopWait, time))
        using (var linked = CancellationTokenSource.CreateLinkedTokenSource(bounded.Token, cancellationToken))
        {
            try
            {
                quiesce = await node.QuiesceGate.QuiesceAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (bounded.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                // Left open and quiesced: later writes wait; the process ends without them.
                failures.Add($"node '{node.Name}': writes in flight did not finish within {stopWait.TotalSeconds:0.#} s; " +
                    "its persistent bitmaps keep their last checkpoint and the journal");
                return;
            }
        }
        List<BitmapRecord> records;
        List<(DirtyBitmap, byte[])> contents = [];
        // Released once the image is closed and the checkpoint taken: a write arriving later fails on
        // the closed image, it does not hang, and the checkpoint covers every write that got through.
        using (quiesce)
        {
            try
            {
                if (!node.Image.ReadOnly)
                    await node.Image.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                // A failed flush cannot prove the bitmaps (QEMU leaves them in use): inconsistent at next start.
                LogFlushFailed(logger, e, node.Name);
                records = [.. node.Bitmaps.Where(b => b.Persistent).Select(b => RecordOf(node, b, inUse: true, content: null) with
                {
                    Inconsistent = true,
                    InconsistentReason = b.InconsistentReason ?? "the image could not be flushed at the clean stop",
                })];
                await StoreForStopAsync(node, records, contents, failures, cancellationToken).ConfigureAwait(false);
                return;
            }
            // The image's own copy first (QEMU stores its bitmaps at close): bits stored, in-use cleared.
            // Failing that, the image keeps them in use, and so must the record: a restart then proves
            // them from the journal instead of finding the image and the record apart.
            var cleanInImage = await StoreInImageAtStopAsync(node, failures, cancellationToken).ConfigureAwait(false);
            try
            {
                await node.Image.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                // Flushed already: what was written is on the disk.
                LogCloseFailed(logger, e, node.Name);
            }
            var bitmaps = PersistentBitmapsOf([node]);
            if (bitmaps.Count == 0)
                return;
            try
            {
                (records, contents) = BuildCheckpoint(bitmaps, cleanStop: cleanInImage, _journal?.LastSequence);
            }
            catch (Exception e)
            {
                // Serialization (a bitmap too large for one array) or the image's stamp (a path that no
                // longer resolves inside the root): this node only.
                failures.Add($"node '{node.Name}': its persistent bitmaps could not be checkpointed ({e.Message}); " +
                    "they keep their last checkpoint and the journal");
                return;
            }
        }
        await StoreForStopAsync(node, records, contents, failures, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Stores the node's persistent bitmaps in its image with in-use cleared (images that hold bitmaps); false when that failed.</summary>
    private async Task<bool> StoreInImageAtStopAsync(BlockNode node, List<string> failures, CancellationToken cancellationToken)
    {
        try
        {
            await ImageBitmaps.StoreAsync(node, b => IsJobWorkingBitmap(node, b) ? _durability?.DurableContent(b) : b.Serialize(), inUse: false, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is IOException or BlockException or ArgumentException)
        {
            failures.Add($"node '{node.Name}': its persistent bitmaps could not be stored in the image ({e.Message}); " +
                "they stay in use there and keep their journal");
            return false;
        }
    }

    /// <summary>Stores one node's records of a stop; a failure is listed, and the stop goes on with the next node.</summary>
    private async Task StoreForStopAsync(BlockNode node, List<BitmapRecord> records, List<(DirtyBitmap, byte[])> contents, List<string> failures, CancellationToken cancellationToken)
    {
        if (records.Count == 0)
            return;
        try
        {
            await store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
            Checkpointed(contents);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            failures.Add($"node '{node.Name}': its persistent bitmaps could not be stored ({e.Message}); " +
                "they keep their last checkpoint and the journal");
        }
    }

    [LoggerMessage(30, LogLevel.Warning, "Node '{Node}': its image could not be flushed at the clean stop; its persistent bitmaps are stored inconsistent")]
    private static partial void LogFlushFailed(ILogger logger, Exception exception, string node);

    [LoggerMessage(31, LogLevel.Information, "Node '{Node}': closing its image at the clean stop failed after the flush (nothing is lost)")]
    private static partial void LogCloseFailed(ILogger logger, Exception exception, string node);
}
