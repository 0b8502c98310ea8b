using BlockMirror.Core.Images;
using BlockMirror.Core.State;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Nodes;

/// <summary>
/// Whether each raw node's path still names the file the node has open. An image replaced under an
/// open node (<c>mv new.img disk.img</c>, the file removed, or a directory on the path swapped for a
/// symbolic link leading outside the image root) keeps taking writes into a file nobody reaches by
/// that path any more, and a checkpoint would stamp the new file with bitmaps of the old one. So
/// the node is marked (<see cref="BlockNode.ImageReplacedReason"/>), its writes refused, and its
/// persistent bitmaps marked inconsistent with the reason: the service never claims exactness for
/// a file it does not have open. Checked in the background every <see cref="Interval"/>, before
/// every transaction, at every checkpoint (a clean stop's too) and before node removal.
/// </summary>
public sealed partial class ImageReplacementCheck(ImageRoot root, TimeProvider time, ILogger<ImageReplacementCheck> logger)
{
    private readonly CancellationTokenSource _stop = new();

    /// <summary>How often the background check compares each node's open file with its path; zero = never (only at control operations).</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Compares <paramref name="node"/>'s open file with its path; on a mismatch marks the node and its
    /// persistent bitmaps (in memory; the caller stores them). True when the replacement is new.
    /// </summary>
    public bool DetectControlLocked(BlockNode node)
    {
        if (node.ImageReplaced || Mismatch(node) is not { } reason || !node.MarkImageReplaced(reason))
            return false;
        foreach (var bitmap in node.Bitmaps.Where(b => b.Persistent))
            bitmap.MarkInconsistent($"the node's image was replaced while it was open: {reason}");
        LogReplaced(logger, node.Name, reason);
        return true;
    }

    /// <summary>Whether <paramref name="node"/>'s image was found replaced (checks first).</summary>
    public bool IsReplacedControlLocked(BlockNode node)
    {
        DetectControlLocked(node);
        return node.ImageReplaced;
    }

    /// <summary>Throws <c>image-replaced</c> when <paramref name="node"/>'s image was found replaced (checks first).</summary>
    public void ThrowIfReplacedControlLocked(BlockNode node)
    {
        DetectControlLocked(node);
        if (node.ImageReplacedReason is { } reason)
            throw BlockErrors.ImageReplaced(node.Name, reason);
    }

    /// <summary>Why the path no longer leads to the open file (fstat against stat of the resolved path), or null while it does or nobody can tell.</summary>
    private string? Mismatch(BlockNode node)
    {
        if (node.Path is not { } path || node.Image is not RawFileImage raw || raw.TryStat() is not { } open)
            return null;
        string full;
        try
        {
            full = root.Resolve(path);
        }
        catch (BlockException e)
        {
            return $"the path no longer leads to its image file ({e.Message})";
        }
        if (StateNative.stat(full, out var now) != 0)
            return LibC.LastErrno is LibC.ENOENT or LibC.ENOTDIR ? $"the image file '{path}' was removed" : null;
        if (now.Device != open.Device || now.Inode != open.Inode)
            return $"the image file '{path}' was replaced by another file";
        return null;
    }

    /// <summary>Starts the background check: <paramref name="checkAsync"/> every <see cref="Interval"/> until <see cref="StopAsync"/>.</summary>
    public void Start(Func<CancellationToken, Task> checkAsync, Func<bool> stopped)
    {
        if (Interval > TimeSpan.Zero)
            _ = Task.Run(() => RunAsync(checkAsync, stopped));
    }

    public Task StopAsync() => _stop.CancelAsync();

    private async Task RunAsync(Func<CancellationToken, Task> checkAsync, Func<bool> stopped)
    {
        using var timer = new PeriodicTimer(Interval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                try
                {
                    await checkAsync(_stop.Token).ConfigureAwait(false);
                }
                catch (BlockException) when (stopped())
                {
                    return;
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // The marks in memory stand (writes are refused); the next round or checkpoint stores them.
                    LogCheckFailed(logger, e);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    [LoggerMessage(1, LogLevel.Warning, "Node '{Node}': its image was replaced while it was open ({Reason}); writes are refused and its persistent bitmaps are inconsistent")]
    private static partial void LogReplaced(ILogger logger, string node, string reason);

    [LoggerMessage(2, LogLevel.Warning, "The background image check could not store what it found; the next round or checkpoint retries")]
    private static partial void LogCheckFailed(ILogger logger, Exception exception);
}
