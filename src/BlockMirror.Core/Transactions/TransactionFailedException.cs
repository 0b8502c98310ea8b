namespace BlockMirror.Core.Transactions;

/// <summary>A transaction was refused: the first failing action's index and its refusal.</summary>
public sealed class TransactionFailedException(int actionIndex, BlockException error)
    : Exception(error.Message, error)
{
    public int ActionIndex { get; } = actionIndex;

    public BlockException Error { get; } = error;
}
