using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;

namespace BlockMirror.Core;

/// <summary>
/// Whether each raw node's path still names the file the node has open. An image replaced under an
/// open node (<c>mv new.img disk.img</c>, the file removed, or a directory on the path swapped for a
/// symbolic link leading outside the image root) keeps taking writes into a file nobody reaches by
/// that path any more, and a checkpoint would stamp the new file with bitmaps of the old one. So
/// the node is marked (<see cref="BlockNode.ImageReplacedReason"/>), its writes refused, and its
/// persistent bitmaps marked inconsistent with the reason: the service never claims exactness for
/// a file it does not have open. Checked in the background every <see cref="ImageCheckInterval"/>,
/// before every transaction, at every checkpoint (a clean stop's too) and before node removal.
/// </summary>
public sealed partial class BlockLayer
{
    private readonly CancellationTokenSource _imageChecksStop = new();

    /// <summary>How often the background check compares each node's open file with its path; zero = never (only at control operations).</summary>
    public TimeSpan ImageCheckInterval { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>The last failure of the background check (storing what it found); null after a good round.</summary>
    public string? LastImageCheckError { get; private set; }

    /// <summary>Compares every node's open file with its path now (what the background check does).</summary>
    public Task CheckImagesAsync(CancellationToken cancellationToken = default) =>
        ControlAsync(() => CheckImagesUnlockedAsync(Nodes, cancellationToken), cancellationToken);

    /// <summary>Marks the nodes whose image was replaced, and stores their bitmaps' new state (control lock held).</summary>
    private async Task CheckImagesUnlockedAsync(IEnumerable<BlockNode> nodes, CancellationToken cancellationToken)
    {
        var replaced = nodes.Where(DetectReplacementUnlocked).ToList();
        var records = replaced
            .SelectMany(n => n.Bitmaps.Where(b => b.Persistent).Select(b => ToRecord(n, b, inUse: true, content: null)))
            .ToList();
        if (records.Count > 0)
            await Store.SaveBitmapsAsync(records, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Compares <paramref name="node"/>'s open file with its path; on a mismatch marks the node and its
    /// persistent bitmaps (in memory; the caller stores them). True when the replacement is new.
    /// </summary>
    private bool DetectReplacementUnlocked(BlockNode node)
    {
        if (node.ImageReplaced || ImageMismatch(node) is not { } reason || !node.MarkImageReplaced(reason))
            return false;
        foreach (var bitmap in node.Bitmaps.Where(b => b.Persistent))
            bitmap.MarkInconsistent($"the node's image was replaced while it was open: {reason}");
        return true;
    }

    /// <summary>Why the path no longer leads to the open file (fstat against stat of the resolved path), or null while it does or nobody can tell.</summary>
    private string? ImageMismatch(BlockNode node)
    {
        if (node.Path is not { } path || node.Image is not RawFileImage raw || raw.TryStat() is not { } open)
            return null;
        string full;
        try
        {
            full = Root.Resolve(path);
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

    /// <summary>Whether <paramref name="node"/>'s image was found replaced (control lock held; checks first).</summary>
    internal bool IsImageReplacedUnlocked(BlockNode node)
    {
        DetectReplacementUnlocked(node);
        return node.ImageReplaced;
    }

    /// <summary>Throws <c>image-replaced</c> when <paramref name="node"/>'s image was found replaced (control lock held; checks first).</summary>
    internal void ThrowIfImageReplacedUnlocked(BlockNode node)
    {
        DetectReplacementUnlocked(node);
        if (node.ImageReplacedReason is { } reason)
            throw BlockErrors.ImageReplaced(node.Name, reason);
    }

    private void StartImageChecks()
    {
        if (ImageCheckInterval > TimeSpan.Zero)
            _ = Task.Run(RunImageChecksAsync);
    }

    private async Task RunImageChecksAsync()
    {
        using var timer = new PeriodicTimer(ImageCheckInterval, Time);
        try
        {
            while (await timer.WaitForNextTickAsync(_imageChecksStop.Token).ConfigureAwait(false))
            {
                try
                {
                    await CheckImagesAsync(_imageChecksStop.Token).ConfigureAwait(false);
                    LastImageCheckError = null;
                }
                catch (BlockException) when (_stopped)
                {
                    return;
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // The marks in memory stand (writes are refused); the next round or checkpoint stores them.
                    LastImageCheckError = e.Message;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
