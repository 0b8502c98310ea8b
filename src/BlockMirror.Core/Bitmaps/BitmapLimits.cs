using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.Bitmaps;

/// <summary>
/// The limits on bitmaps: a budget for their memory, and the largest bitmap that can exist (and be
/// stored). Refusals come before anything is allocated or changed, with a stable code, so a request
/// the limits refuse changes nothing.
/// </summary>
public sealed class BitmapLimits(NodeRegistry nodes, Func<IEnumerable<Job>> jobs, Func<bool> keepsShadows)
{
    /// <summary>Default of <see cref="MemoryBudget"/>: 1 GiB (a 1 TiB node at 512-byte granularity has 256 MiB bitmaps).</summary>
    public const long DefaultMemoryBudget = 1L << 30;

    /// <summary>
    /// Default of <see cref="MaxPersistentBitmapBytes"/>: SQLite's largest blob (SQLITE_MAX_LENGTH,
    /// 10^9 bytes); a checkpoint stores a persistent bitmap's content in one row.
    /// </summary>
    public const long DefaultMaxPersistentBitmapBytes = 1_000_000_000;

    /// <summary>The largest granularity the hint of <see cref="CheckSize"/> proposes (2 GiB).</summary>
    private const long LargestHintedGranularity = 1L << 31;

    /// <summary>
    /// Bytes all bitmaps may take together (<see cref="MemoryInUse"/>): every node's bitmaps, the
    /// durability shadow of each persistent one, jobs' private working bitmaps, and while a
    /// transaction runs, its backups and the checkpoint contents it stores. A request that would go
    /// beyond is refused with <c>bitmap-memory-exceeded</c>. Bitmaps restored at start are never refused.
    /// </summary>
    public long MemoryBudget { get; set; } = DefaultMemoryBudget;

    /// <summary>The largest serialized content of a persistent bitmap the store can hold (larger: <c>bitmap-too-large</c>).</summary>
    public long MaxPersistentBitmapBytes { get; set; } = DefaultMaxPersistentBitmapBytes;

    /// <summary>Bytes the bitmaps take now (see <see cref="MemoryBudget"/>; a transaction's transient copies excluded).</summary>
    public long MemoryInUse
    {
        get
        {
            var total = 0L;
            foreach (var node in nodes.Nodes)
            {
                foreach (var bitmap in node.Bitmaps)
                    total += LastingBytes(bitmap.MemoryBytes, bitmap.Persistent);
            }
            foreach (var job in jobs())
                total += job.PrivateBitmapBytes;
            return total;
        }
    }

    /// <summary>What a node bitmap of <paramref name="memoryBytes"/> takes for good: with the journal, a persistent one has a shadow of the same size (BitmapDurability).</summary>
    public long LastingBytes(long memoryBytes, bool persistent) =>
        persistent && keepsShadows() ? 2 * memoryBytes : memoryBytes;

    /// <summary>Refuses (<c>bitmap-memory-exceeded</c>) unless <paramref name="bytes"/> more fit the budget beside what is in use.</summary>
    public void EnsureMemory(long bytes)
    {
        if (bytes <= 0)
            return;
        var inUse = MemoryInUse;
        if (bytes > MemoryBudget - inUse)
            throw BlockErrors.BitmapMemoryExceeded(bytes, inUse, MemoryBudget);
    }

    /// <summary>
    /// Refuses (<c>bitmap-too-large</c>) a bitmap of <paramref name="granularity"/> over
    /// <paramref name="size"/> bytes that cannot exist (more bits than <see cref="HBitmap.MaxLength"/>)
    /// or, <paramref name="persistent"/>, whose checkpoint the store cannot hold; the message names the
    /// smallest granularity that would do.
    /// </summary>
    public void CheckSize(long size, long granularity, bool persistent)
    {
        if (Fits(size, granularity, persistent))
            return;
        var what = persistent ? "persistent bitmap" : "bitmap";
        var limit = persistent
            ? $"at most {HBitmap.MaxLength} bits and {MaxPersistentBitmapBytes} bytes of stored content"
            : $"at most {HBitmap.MaxLength} bits";
        var larger = granularity;
        while (larger < LargestHintedGranularity && !Fits(size, larger, persistent))
            larger <<= 1;
        var hint = Fits(size, larger, persistent) ? $"; use a granularity of at least {larger}" : "";
        throw BlockErrors.BitmapTooLarge(
            $"A {what} of granularity {granularity} on a node of {size} bytes is too large ({limit}){hint}");
    }

    private bool Fits(long size, long granularity, bool persistent)
    {
        var granules = DirtyBitmap.GranulesFor(size, granularity);
        return granules <= HBitmap.MaxLength && (!persistent || DirtyBitmap.SerializedBytesFor(granules) <= MaxPersistentBitmapBytes);
    }
}
