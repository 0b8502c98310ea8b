using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// mirror-start: blockdev-mirror as a transaction action. Prepare validates in QEMU's order and
/// attaches the job (nodes busy, write filter in, working bitmap set up) at the transaction's
/// quiesced instant, so no write escapes it; abort detaches it; commit announces it (created);
/// after commit the copy loop starts. <see cref="TransactionAction.Result"/> is the <see cref="MirrorJob"/>.
/// </summary>
public sealed class MirrorStartAction(MirrorOptions options) : TransactionAction
{
    /// <summary>QEMU's DEFAULT_MIRROR_BUF_SIZE.</summary>
    public const long DefaultBufSize = 16L << 20;

    private const long MinGranularity = 512;
    private const long MaxGranularity = 64L << 20;

    private MirrorJob? _job;

    public MirrorOptions Options { get; } = options;

    /// <summary>
    /// The checks in the order of qmp_blockdev_mirror → blockdev_mirror_common → mirror_start_job,
    /// so a request with two faults is refused for the one QEMU names: the nodes are looked up;
    /// the granularity is checked before the nodes' state (busy); the working-bitmap checks of the
    /// proposed series follow; then buf-size, mirror into itself, job id and speed (mirror_start_job,
    /// block_job_create); last what QEMU finds on attaching the target (read-only, another user) and
    /// the size, which QEMU only compares once the job runs.
    /// </summary>
    public override ValueTask PrepareControlLockedAsync(TransactionContext context)
    {
        var layer = context.Layer;
        var o = Options;
        var device = layer.GetNode(o.Device);
        var target = layer.GetNode(o.Target);
        CheckGranularityArgument(o);
        CheckNotInJob(device, target);
        var named = CheckBitmap(device, o);
        var granularity = named is null ? (int)(o.Granularity is > 0 ? o.Granularity.Value : DirtyBitmap.DefaultGranularity) : CheckBitmapGranularity(named);
        var bufSize = CheckBufSize(o, granularity);
        CheckNotIntoItself(layer, device, target);
        var id = CheckId(layer, o, device);
        if (o.Speed < 0)
            throw BlockErrors.Invalid("invalid-speed", "Parameter 'speed' expects a non-negative value");
        CheckTargetUsable(target);
        if (device.Size != target.Size)
            throw BlockErrors.Invalid("size-mismatch", "Source and target image have different sizes");

        var mode = named is null ? (BitmapMode?)null : o.BitmapMode ?? BitmapMode.Always;
        ReserveWorkingBitmap(context, device, granularity, named, mode);
        _job = new MirrorJob(layer.JobHost, id, o, device, target, granularity, bufSize, named, mode);
        _job.AttachControlLocked();
        if (named is not null && mode == BitmapMode.Always)
            context.Touch(device, named);
        Result = _job;
        return ValueTask.CompletedTask;
    }

    public override void CommitControlLocked(TransactionContext context) => _job?.CreatedControlLocked();

    public override void AbortControlLocked(TransactionContext context) => _job?.DetachControlLocked();

    public override void AfterCommitControlLocked(TransactionContext context) => _job?.StartControlLocked();

    /// <summary>
    /// The job's private working bitmap (all modes but a caller bitmap in mode always) must exist and
    /// fit the bitmap memory budget; it is counted for as long as the job runs. A caller bitmap taken
    /// over (mode always) is stored with the transaction.
    /// </summary>
    private static void ReserveWorkingBitmap(TransactionContext context, BlockNode device, int granularity, DirtyBitmap? named, BitmapMode? mode)
    {
        if (named is not null && mode == BitmapMode.Always)
        {
            context.ReserveBitmapMemory(0, 0, named);
            return;
        }
        context.Layer.CheckBitmapSize(device.Size, granularity, persistent: false);
        var working = DirtyBitmap.MemoryBytesFor(DirtyBitmap.GranulesFor(device.Size, granularity));
        // Seeding it from the caller's bitmap copies that bitmap's words once.
        context.ReserveBitmapMemory(working, named?.SerializedBytes ?? 0);
    }

    /// <summary>blockdev_mirror_common's op blockers: a node another job owns.</summary>
    private static void CheckNotInJob(BlockNode device, BlockNode target)
    {
        foreach (var node in new[] { device, target })
        {
            // A copy from or to a file no longer under its node's path would be a copy nobody can use.
            if (node.ImageReplacedReason is { } replaced)
                throw BlockErrors.ImageReplaced(node.Name, replaced);
        }
        foreach (var node in new[] { device, target })
        {
            if (node.JobId is { } job)
                throw BlockErrors.NodeBusy(node.Name, $"block device is in use by block job: mirror ({job})");
        }
    }

    /// <summary>
    /// mirror_start_job: "Can't mirror node into itself", after skipping filters; here a node that is
    /// a connection to this service's own export of the other is that node (a write-blocking mirror
    /// into it would wait for itself).
    /// </summary>
    private static void CheckNotIntoItself(BlockLayer layer, BlockNode device, BlockNode target)
    {
        if (ReferenceEquals(device, target))
            throw BlockErrors.Invalid("mirror-into-itself", "Can't mirror node into itself");
        var source = layer.ResolveLoopback(device);
        var destination = layer.ResolveLoopback(target);
        if (ReferenceEquals(source, destination))
            throw BlockErrors.Invalid("mirror-into-itself",
                $"Can't mirror node into itself: '{device.Name}' and '{target.Name}' reach the same node '{source.Name}' through this service's NBD exports");
    }

    /// <summary>What QEMU finds when the job takes the target: a read-only node, or another user (an export).</summary>
    private static void CheckTargetUsable(BlockNode target)
    {
        if (target.ReadOnly)
            throw BlockErrors.NodeReadOnly(target.Name);
        if (target.Exports.Count > 0)
            throw BlockErrors.NodeBusy(target.Name, $"block device is in use by NBD export '{target.Exports.First()}'");
    }

    /// <summary>The working-bitmap checks of the proposed QEMU series, then bitmapMode's own.</summary>
    private static DirtyBitmap? CheckBitmap(BlockNode device, MirrorOptions o)
    {
        if (o.Bitmap is null)
        {
            if (o.BitmapMode is not null)
                throw BlockErrors.Invalid("bitmap-mode-without-bitmap", "Cannot specify bitmap sync mode without a bitmap");
            return null;
        }
        if (o.Sync != MirrorSyncMode.Full)
            throw BlockErrors.Invalid("bitmap-sync-mode", $"Sync mode '{JobNames.Of(o.Sync)}' not supported with bitmap.");
        if (o.Granularity is > 0)
            throw BlockErrors.Invalid("bitmap-and-granularity", "Granularity and bitmap cannot both be set");
        var bitmap = device.GetBitmap(o.Bitmap);
        bitmap.Check(BitmapCheck.Default);
        if (bitmap.Disabled)
            throw BlockErrors.BitmapDisabled(bitmap.Name);
        return bitmap;
    }

    /// <summary>blockdev_mirror_common's first checks: 0 = default, else 512 B … 64 MiB and a power of two.</summary>
    private static void CheckGranularityArgument(MirrorOptions o)
    {
        if (o.Granularity is not { } g || g == 0)
            return;
        if (g < MinGranularity || g > MaxGranularity)
            throw BlockErrors.InvalidGranularity("Parameter 'granularity' expects a value in range [512B, 64MB]");
        if ((g & (g - 1)) != 0)
            throw BlockErrors.InvalidGranularity("Parameter 'granularity' expects a power of 2");
    }

    /// <summary>The working bitmap's granularity becomes the job's; the copy loop's chunks stay within QEMU's 64 MiB cap.</summary>
    private static int CheckBitmapGranularity(DirtyBitmap named)
    {
        if (named.Granularity > MaxGranularity)
            throw BlockErrors.InvalidGranularity($"Bitmap granularity {named.Granularity} exceeds the mirror's maximum granularity of 64MB");
        return (int)named.Granularity;
    }

    private static long CheckBufSize(MirrorOptions o, int granularity)
    {
        var bufSize = o.BufSize ?? 0;
        if (bufSize < 0)
            throw BlockErrors.Invalid("invalid-buf-size", "Invalid parameter 'buf-size'");
        if (bufSize == 0)
            bufSize = DefaultBufSize;
        if (bufSize > long.MaxValue - granularity)
            throw BlockErrors.Invalid("invalid-buf-size", "Invalid parameter 'buf-size'");
        return (bufSize + granularity - 1) / granularity * granularity;
    }

    /// <summary>The job id defaults to the device's name (QEMU's job-id); it must be free among active jobs.</summary>
    private static string CheckId(BlockLayer layer, MirrorOptions o, BlockNode device)
    {
        var id = o.Id ?? device.Name;
        if (!Names.IsValid(id))
            throw BlockErrors.Invalid("invalid-name", $"Invalid job ID '{id}'");
        if (layer.FindJob(id) is not null)
            throw BlockErrors.Conflict("job-exists", $"Job ID '{id}' already in use");
        return id;
    }
}
