using BlockMirror.Api.Contracts;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Api.Endpoints;

/// <summary>mirror-start inside a transaction: the same options as POST /jobs/mirror.</summary>
public sealed class MirrorActionFactory : ITransactionActionFactory
{
    public TransactionAction CreateMirrorStart(MirrorJobRequest request) => new MirrorStartAction(JobEndpoints.ToOptions(request));
}
