using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// QEMU's qmp_transaction: actions prepared in order under the control lock with every node's writes
/// quiesced, the outcome stored whole, then committed; the first failure aborts the prepared ones in
/// reverse order, so a refused transaction changes nothing, in memory or on disk.
/// </summary>
public sealed class TransactionRunner(BlockLayer layer, ControlLock control, NodeRegistry nodes, BitmapPersistence persistence)
{
    /// <summary>Default of <see cref="MaxActions"/>.</summary>
    public const int DefaultMaxActions = 100;

    /// <summary>Actions one transaction may hold; more are refused with <c>too-many-actions</c>.</summary>
    public int MaxActions { get; set; } = DefaultMaxActions;

    /// <summary>
    /// Runs actions all or nothing under the control lock. More than <see cref="MaxActions"/> actions
    /// are refused before any runs (through the returned task, like every other refusal).
    /// </summary>
    public Task<IReadOnlyList<object?>> RunAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken)
    {
        if (actions.Count > MaxActions)
            return Task.FromException<IReadOnlyList<object?>>(BlockErrors.TooManyActions(actions.Count, MaxActions));
        return control.RunAsync(async () =>
        {
            // Before anything is prepared: an action refused for a replaced image must change nothing.
            await persistence.CheckImagesControlLockedAsync(nodes.Nodes, cancellationToken).ConfigureAwait(false);
            return await RunControlLockedAsync(actions, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    /// <summary>
    /// A transaction of one action, whose refusal is thrown as the action's own error (not wrapped in
    /// <see cref="TransactionFailedException"/>: there is no other action to point at), returning its result.
    /// </summary>
    public async Task<T> RunOneAsync<T>(TransactionAction action, CancellationToken cancellationToken)
    {
        try
        {
            var results = await RunAsync([action], cancellationToken).ConfigureAwait(false);
            return (T)results[0]!;
        }
        catch (TransactionFailedException e)
        {
            throw e.Error;
        }
    }

    /// <summary>
    /// As <see cref="RunAsync"/>, for callers already holding the control lock. Every action
    /// prepares, then the whole outcome is stored in one store transaction, and only then do the
    /// actions commit: any failure before that point (a refusal, any other exception of an action,
    /// the store's) aborts every prepared action. A refusal is rethrown as
    /// <see cref="TransactionFailedException"/> with its index; anything else as it is (the host maps
    /// a store's failure to 503 storage-unavailable).
    /// </summary>
    public async Task<IReadOnlyList<object?>> RunControlLockedAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken)
    {
        var context = new TransactionContext(layer);
        var prepared = new List<TransactionAction>(actions.Count);
        using (await nodes.QuiesceAllAsync(cancellationToken).ConfigureAwait(false))
        {
            for (var i = 0; i < actions.Count; i++)
            {
                try
                {
                    await actions[i].PrepareControlLockedAsync(context).ConfigureAwait(false);
                    prepared.Add(actions[i]);
                }
                catch (BlockException e)
                {
                    AbortPrepared(prepared, context);
                    throw new TransactionFailedException(i, e);
                }
                catch
                {
                    AbortPrepared(prepared, context);
                    throw;
                }
            }
            // Still quiesced: a checkpoint must see every mark of the writes its journal sequence
            // covers, and no write may rely on the old durable state of a bitmap cleared here before
            // the new one is stored (it would skip the journal and be lost with a crash).
            try
            {
                await persistence.StoreTransactionControlLockedAsync(context, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                AbortPrepared(prepared, context);
                throw;
            }
            foreach (var action in prepared)
                action.CommitControlLocked(context);
        }
        foreach (var action in prepared)
            action.AfterCommitControlLocked(context);
        return [.. actions.Select(a => a.Result)];
    }

    private static void AbortPrepared(List<TransactionAction> prepared, TransactionContext context)
    {
        for (var j = prepared.Count - 1; j >= 0; j--)
            prepared[j].AbortControlLocked(context);
    }
}
