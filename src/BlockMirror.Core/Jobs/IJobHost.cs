using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// What a job kind may ask of the block layer, and nothing more (QEMU: what a BlockJobDriver reaches
/// through its job and nodes): the clock and the event channel, the job registry's bookkeeping, the
/// record of its state, a node's writes quiesced, an image check, a pivot and a checkpoint. A new job
/// kind (backup, stream, commit) is written against this; the registry never needs to know it.
/// What a job holds (its nodes' <see cref="BlockNode.JobId"/>, busy bitmaps, the bitmaps it works
/// from: <see cref="Job.WorksFrom"/>) the job declares itself.
/// </summary>
public interface IJobHost
{
    TimeProvider Time { get; }

    /// <summary>Where a job logs what it swallows (a best-effort step at its exit that failed).</summary>
    ILogger Logger { get; }

    /// <summary>Where the job's events go (published under the job's state lock, so in transition order).</summary>
    IEventSink Events { get; }

    /// <summary>Whether job records are stored at all (progress saves are skipped otherwise).</summary>
    bool StoresJobs { get; }

    /// <summary>Queues the job's current record for the store, in order, without waiting.</summary>
    void QueueSave(Job job);

    /// <summary>Runs the job's exit (its lifecycle after the run) under the control lock, also while the service stops.</summary>
    Task RunExitAsync(Func<Task> exitControlLocked);

    /// <summary>The job is listed from now on (its creating transaction prepared it).</summary>
    void RegisterControlLocked(Job job);

    /// <summary>Undoes <see cref="RegisterControlLocked"/> (the creating transaction aborted).</summary>
    void UnregisterControlLocked(Job job);

    /// <summary>The job was dismissed: it leaves the list for the history.</summary>
    void DismissedControlLocked(Job job);

    /// <summary>Stops new writes to <paramref name="node"/> and waits for those in flight; dispose the result to resume them.</summary>
    Task<IDisposable> QuiesceAsync(BlockNode node, CancellationToken cancellationToken = default);

    /// <summary>Whether <paramref name="node"/>'s image was replaced under its path (checks first).</summary>
    bool IsImageReplacedControlLocked(BlockNode node);

    /// <summary>
    /// The device takes the target's image and the target node is consumed, stored whole before it is
    /// reported (the device's writes are quiesced by the caller); returns the device's old image. When
    /// the store fails, the device is switched back and the store's exception is thrown.
    /// </summary>
    Task<IBlockImage> PivotControlLockedAsync(BlockNode device, BlockNode target, CancellationToken cancellationToken = default);

    /// <summary>Stores a bitmap the job changed (a checkpoint of the node's persistent bitmaps, with its writes quiesced).</summary>
    Task CheckpointControlLockedAsync(BlockNode node, DirtyBitmap bitmap, CancellationToken cancellationToken = default);
}
