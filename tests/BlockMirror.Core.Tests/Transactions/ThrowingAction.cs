using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Transactions;

/// <summary>An action whose prepare fails with an exception that is not a refusal (a bug, an allocation that failed).</summary>
public sealed class ThrowingAction(Exception exception) : TransactionAction
{
    public override ValueTask PrepareControlLockedAsync(TransactionContext context) => ValueTask.FromException(exception);
}
