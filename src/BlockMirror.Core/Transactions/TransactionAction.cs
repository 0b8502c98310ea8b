namespace BlockMirror.Core.Transactions;

/// <summary>
/// One action of a transaction (QEMU's TransactionActionDrv): <see cref="PrepareControlLockedAsync"/> does the
/// work and may refuse; <see cref="CommitControlLocked"/> makes it final; <see cref="AbortControlLocked"/> undoes a prepared
/// action. Actions run in order under the control lock with data writes quiesced; the first
/// failure aborts every prepared action in reverse order.
/// </summary>
public abstract class TransactionAction
{
    /// <summary>What the action returns to the caller once committed (e.g. the bitmap).</summary>
    public object? Result { get; protected set; }

    public abstract ValueTask PrepareControlLockedAsync(TransactionContext context);

    public virtual void CommitControlLocked(TransactionContext context)
    {
    }

    public virtual void AbortControlLocked(TransactionContext context)
    {
    }

    /// <summary>Runs after commit, outside the quiesced section (e.g. starting a job's loop).</summary>
    public virtual void AfterCommitControlLocked(TransactionContext context)
    {
    }
}
