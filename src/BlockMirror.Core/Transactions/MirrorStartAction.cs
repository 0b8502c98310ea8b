using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Transactions;

/// <summary>
/// mirror-start: blockdev-mirror as a transaction action. Prepare validates in API.md's order and
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

    public override ValueTask PrepareAsync(TransactionContext context)
    {
        var layer = context.Layer;
        var o = Options;
        var device = layer.GetNode(o.Device);
        var target = layer.GetNode(o.Target);
        CheckNodes(device, target);

        var named = CheckBitmap(device, o);
        var granularity = CheckGranularity(o, named);
        var bufSize = CheckBufSize(o, granularity);
        var id = CheckId(layer, o, device);
        if (o.Speed < 0)
            throw BlockErrors.Invalid("invalid-speed", "Parameter 'speed' expects a non-negative value");

        var mode = named is null ? (BitmapMode?)null : o.BitmapMode ?? BitmapMode.Always;
        _job = new MirrorJob(layer, id, o, device, target, granularity, bufSize, named, mode);
        _job.Attach();
        if (named is not null && mode == BitmapMode.Always)
            context.Touch(device, named);
        Result = _job;
        return ValueTask.CompletedTask;
    }

    public override void Commit(TransactionContext context) => _job?.Created();

    public override void Abort(TransactionContext context) => _job?.Detach();

    public override void AfterCommit(TransactionContext context) => _job?.Start();

    private static void CheckNodes(BlockNode device, BlockNode target)
    {
        if (ReferenceEquals(device, target))
            throw BlockErrors.Invalid("mirror-into-itself", "Can't mirror node into itself");
        foreach (var node in new[] { device, target })
        {
            // A copy from or to a file no longer under its node's path would be a copy nobody can use.
            if (node.ImageReplacedReason is { } replaced)
                throw BlockErrors.ImageReplaced(node.Name, replaced);
        }
        if (target.ReadOnly)
            throw BlockErrors.NodeReadOnly(target.Name);
        foreach (var node in new[] { device, target })
        {
            if (node.JobId is { } job)
                throw BlockErrors.NodeBusy(node.Name, $"block device is in use by block job: mirror ({job})");
        }
        if (target.Exports.Count > 0)
            throw BlockErrors.NodeBusy(target.Name, $"block device is in use by NBD export '{target.Exports.First()}'");
        if (device.Size != target.Size)
            throw BlockErrors.Invalid("size-mismatch", "Source and target image have different sizes");
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

    private static int CheckGranularity(MirrorOptions o, DirtyBitmap? named)
    {
        if (named is not null)
        {
            // The working bitmap's granularity becomes the job's; the copy loop's chunks stay within QEMU's 64 MiB cap.
            if (named.Granularity > MaxGranularity)
                throw BlockErrors.InvalidGranularity($"Bitmap granularity {named.Granularity} exceeds the mirror's maximum granularity of 64MB");
            return (int)named.Granularity;
        }
        if (o.Granularity is not { } g || g == 0)
            return DirtyBitmap.DefaultGranularity;
        if (g < MinGranularity || g > MaxGranularity)
            throw BlockErrors.InvalidGranularity("Parameter 'granularity' expects a value in range [512B, 64MB]");
        if ((g & (g - 1)) != 0)
            throw BlockErrors.InvalidGranularity("Parameter 'granularity' expects a power of 2");
        return (int)g;
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
