using BlockMirror.Api.Contracts;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Api.Endpoints;

/// <summary>Block-layer objects to their REST shapes.</summary>
public static class DtoMapping
{
    public static NodeDto ToDto(this BlockNode node, ImageRoot root)
    {
        long allocated;
        try
        {
            allocated = node.Image.AllocatedBytes;
        }
        catch (IOException)
        {
            allocated = 0;
        }
        var image = node.Image;
        var format = image is ILayeredImage layered ? layered.Format : node.Driver;
        var backing = BackingLayer.ChainOf(image, root).Select(b => new BackingImageDto(b.Path, b.Format)).ToList();
        // The connection in use now: a reconnect redoes TLS, and the peer's certificate may have been renewed meanwhile.
        var remote = image as BlockMirror.Nbd.NbdImage;
        return new NodeDto(node.Name, node.Driver, format, backing, node.Path, node.Uri, node.Size, allocated, node.ReadOnly, node.Busy, node.JobId,
            [.. node.Bitmaps.Select(b => b.Name)], [.. node.Exports], node.CreatedAt, node.ImageReplaced, node.ImageReplacedReason,
            image is HostDeviceImage, remote?.Tls ?? false, remote?.Client.PeerSubject, new NodeCacheDto(image.CacheDirect));
    }

    public static BitmapDto ToDto(this DirtyBitmap bitmap, BlockNode node) =>
        new(node.Name, bitmap.Name, bitmap.Granularity, bitmap.Count, bitmap.Recording, bitmap.Busy, bitmap.Persistent, bitmap.Inconsistent,
            bitmap.Inconsistent ? bitmap.InconsistentReason : null);

    /// <summary>A live job as the API shows it (its duration so far while it runs).</summary>
    public static JobDto ToDto(this Job job) => job.GetInfo().ToDto(job.Host.Time.GetUtcNow().UtcDateTime);

    /// <summary>A job snapshot; <paramref name="now"/> ends the duration of a job not finished.</summary>
    public static JobDto ToDto(this JobInfo i, DateTime now) => new(
        i.Id, i.Type, i.Status, i.Device, i.Target, i.Sync, i.Bitmap, i.BitmapMode, i.CopyMode,
        // A record stored before auto existed: what writes did was the mode asked for.
        i.EffectiveCopyMode ?? i.CopyMode, i.CopyModeSwitchedAt,
        i.Granularity, i.BufSize, i.Speed, i.CurrentProgress, i.TotalProgress, i.Remaining, i.BytesCopied,
        i.CopyRate, i.DirtyRate, i.EtaSeconds, i.Ready, i.Paused, i.ActivelySynced, i.IoStatus, i.Error,
        i.AutoFinalize, i.AutoDismiss, i.CreatedAt, i.ReadyAt, i.UpdatedAt, i.FinishedAt,
        Math.Round(Math.Max(0, ((i.FinishedAt ?? now) - i.CreatedAt).TotalSeconds), 3),
        i.Outcome, i.CancelMode);
}
