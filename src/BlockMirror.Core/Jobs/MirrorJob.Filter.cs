using System.Runtime.CompilerServices;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Jobs;

/// <summary>The write hook on the device (bdrv_mirror_top_do_write and do_sync_target_write).</summary>
public sealed partial class MirrorJob
{
    /// <summary>
    /// Every write to the device while the job is attached. Write-blocking mode (and nothing has
    /// failed or been cancelled) copies it to the target before completing; otherwise the written
    /// range is marked in the working bitmap for the background copy.
    /// </summary>
    internal ValueTask FilterWriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken) =>
        CopiesToTarget ? ActiveWriteAsync(node, request, cancellationToken) : BackgroundWriteAsync(node, request, cancellationToken);

    private bool CopiesToTarget =>
        CopyMode == MirrorCopyMode.WriteBlocking && !_loopExited && Volatile.Read(ref _failure) is null && !ForceCancelled;

    private async ValueTask BackgroundWriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken)
    {
        await JournalAheadAsync(node, request.Offset, request.Length).ConfigureAwait(false);
        await ApplyToSourceAsync(node, request, cancellationToken).ConfigureAwait(false);
        await MarkWrittenAsync(node, request.Offset, request.Length).ConfigureAwait(false);
    }

    /// <summary>
    /// Passes a request down to the device (its image and its own bitmaps). If it fails, the range
    /// is still marked for the background copy before the error goes back to the caller: a write
    /// that failed part-way changed some of the source's bytes, and the target must get them too
    /// (QEMU marks the job's bitmap whatever the result, except in write-blocking mode, where it
    /// loses them; here that mode falls back to the background copy for the range).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ApplyToSourceAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken)
    {
        try
        {
            await node.ApplyAndMarkAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            try
            {
                await MarkWrittenAsync(node, request.Offset, request.Length).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Marked in memory before any journal call (which the write-ahead made a bit test);
                // the caller gets the request's own error.
            }
            throw;
        }
    }

    /// <summary>
    /// Write-ahead for the caller's persistent bitmap while it is the working bitmap (disabled, so the
    /// node does not journal it): the range is durable before the source changes, so after a crash it
    /// is dirty even if the write was never acknowledged or never reached the target.
    /// </summary>
    private ValueTask JournalAheadAsync(BlockNode node, long offset, long length) =>
        ReferenceEquals(_working, _named) && _named.Persistent && node.EnsureBitmapRangeDurable is { } journal
            ? journal(node, _named, offset, length)
            : ValueTask.CompletedTask;

    /// <summary>Marks a range the target does not have yet: the background copy will bring it.</summary>
    private ValueTask MarkWrittenAsync(BlockNode node, long offset, long length)
    {
        var newly = _working.MarkDirty(offset, length);
        // Mark first, then clear: the loop's clean check relies on this order.
        Interlocked.Exchange(ref _activelySynced, 0);
        Wake.Set();
        if (newly == 0)
            return ValueTask.CompletedTask;
        _dirtyRate.Add(newly * Granularity);
        // The caller's persistent bitmap is disabled while the filter marks it, so the node does
        // not journal it: the filter must, before the write is acknowledged.
        if (ReferenceEquals(_working, _named) && _named.Persistent && node.EnsureBitmapRangeDurable is { } journal)
            return journal(node, _named, offset, length);
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Write-blocking: register the write, wait for every overlapping operation registered before
    /// it, write the source, then the target synchronously. The caller's result is the source's:
    /// a target failure re-dirties the range and follows on-target-error, the write still succeeds.
    /// </summary>
    private async ValueTask ActiveWriteAsync(BlockNode node, WriteRequest request, CancellationToken cancellationToken)
    {
        var op = new MirrorOp(request.Offset, request.Length, active: true);
        List<Task>? earlier = null;
        lock (_opsLock)
        {
            foreach (var other in _ops)
            {
                if (other.Overlaps(op.Offset, op.End))
                    (earlier ??= []).Add(other.WhenDoneOpsLocked());
            }
            _ops.Add(op);
        }
        try
        {
            if (earlier is not null)
                await Task.WhenAll(earlier).ConfigureAwait(false);
            await JournalAheadAsync(node, request.Offset, request.Length).ConfigureAwait(false);
            await ApplyToSourceAsync(node, request, cancellationToken).ConfigureAwait(false);
            if (CopiesToTarget)
                await SyncTargetWriteAsync(request).ConfigureAwait(false);
            else
                await MarkWrittenAsync(node, request.Offset, request.Length).ConfigureAwait(false);
        }
        finally
        {
            TaskCompletionSource? waiters;
            lock (_opsLock)
            {
                _ops.Remove(op);
                waiters = op.TakeWaitersOpsLocked();
            }
            waiters?.TrySetResult();
            Wake.Set();
        }
    }

    /// <summary>
    /// do_sync_target_write: a dirty granule only partly covered at either end stays for the
    /// background copy (the target may not hold the rest of it); fully covered granules are clean
    /// once the target has the bytes; partly covered clean granules are written partly, which is
    /// right because their other bytes already match.
    /// </summary>
    private async ValueTask SyncTargetWriteAsync(WriteRequest request)
    {
        var start = request.Offset;
        var end = request.End;
        if (start % Granularity != 0 && _working.IsDirty(start))
            start = Math.Min(RoundUp(start, Granularity), end);
        if (end % Granularity != 0 && end < Size && end > start && _working.IsDirty(end - 1))
            end = Math.Max(RoundDown(end, Granularity), start);
        if (start >= end)
            return;

        _working.ClearDirty(start, end - start);
        try
        {
            var length = end - start;
            // Through the target node's own write path (its bitmaps record the copy), past its guard.
            var copy = request.Kind switch
            {
                WriteKind.Write => WriteRequest.ForData(start, request.Data.Slice((int)(start - request.Offset), (int)length), request.Fua),
                WriteKind.WriteZeroes => WriteRequest.ForZeroes(start, length, request.MayUnmap && Options.Unmap),
                _ => WriteRequest.ForDiscard(start, length),
            };
            await _target.WriteAsOwnerAsync(copy, Abandoned).ConfigureAwait(false);
            Interlocked.Add(ref _currentProgress, length);
            Interlocked.Add(ref _bytesCopied, length);
            _copyRate.Add(length);
        }
        catch (Exception e) when (e is not OperationCanceledException || Abandoning)
        {
            // The guest's write succeeded on the source; the target's copy is still to do. A force
            // cancel abandoning it is not an error of the target.
            _working.MarkDirty(start, end - start);
            if (!Abandoning)
                OnIoError(e, read: false);
        }
    }
}
