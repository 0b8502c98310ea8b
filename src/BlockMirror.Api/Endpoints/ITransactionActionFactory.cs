using BlockMirror.Api.Contracts;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Api.Endpoints;

/// <summary>Builds the transaction actions that need more than the request (mirror-start).</summary>
public interface ITransactionActionFactory
{
    TransactionAction CreateMirrorStart(MirrorJobRequest request);
}
