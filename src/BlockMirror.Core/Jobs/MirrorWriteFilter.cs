using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Jobs;

/// <summary>The mirror's hook on the source's write path (QEMU's mirror_top filter).</summary>
internal sealed class MirrorWriteFilter(MirrorJob job) : IWriteFilter
{
    public ValueTask WriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken) =>
        job.FilterWriteAsync(node, request, cancellationToken);
}
