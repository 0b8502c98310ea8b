using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// Refuses writes to a mirror's target node from other doors while the job owns it (QEMU opens
/// the target sharing only WRITE_UNCHANGED): anyone else writing it would make the copy wrong. The
/// job itself writes past this filter (<see cref="BlockNode.WriteAsOwnerAsync"/>), so the target's
/// bitmaps, journal and quiesce gate still see every byte it writes.
/// </summary>
internal sealed class TargetGuardFilter(string jobId) : IWriteFilter
{
    public ValueTask WriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken) =>
        ValueTask.FromException(BlockErrors.NodeBusy(node.Name, $"block device is in use by block job: mirror ({jobId})"));
}
