using BlockMirror.Core.Images;

namespace BlockMirror.Tests.Shared;

/// <summary>
/// A kill -9 test's seeded workload: batches of writes (<see cref="TaggedBlocks"/> content), zero
/// writes and discards on disjoint blocks, run concurrently, with a flush after most batches.
/// Discards are given whole clusters, so what they leave is known.
/// </summary>
internal sealed class KillWorkload(Random rng, long firstId, int blocks, int blocksPerCluster)
{
    private long _nextId = firstId;

    /// <summary>The id of the last operation handed out.</summary>
    public long LastId => _nextId - 1;

    /// <summary>The next batch: one to eight operations on disjoint blocks, each with whether a zero write may unmap.</summary>
    public List<(KilledOperation Op, bool Unmap)> NextBatch()
    {
        var batch = new List<(KilledOperation, bool)>();
        var taken = new List<(int First, int Count)>();
        for (var i = rng.Next(1, 9); i > 0; i--)
        {
            var kind = rng.Next(10) switch { < 7 => 'W', < 9 => 'Z', _ => 'D' };
            int first;
            int count;
            if (kind == 'D')
            {
                count = blocksPerCluster * rng.Next(1, 4);
                first = rng.Next((blocks - count) / blocksPerCluster) * blocksPerCluster;
            }
            else
            {
                count = rng.Next(1, 33);
                first = rng.Next(2) == 0 ? rng.Next(blocks - count) : rng.Next((blocks - count) / blocksPerCluster) * blocksPerCluster;
            }
            if (taken.Any(t => first < t.First + t.Count && t.First < first + count))
                continue;
            taken.Add((first, count));
            batch.Add((new KilledOperation(_nextId++, kind, first, count), rng.Next(2) == 0));
        }
        return batch;
    }

    /// <summary>Whether the batch just run is followed by a flush (six times in ten).</summary>
    public bool FlushAfterBatch() => rng.Next(10) < 6;

    /// <summary>The I/O of one operation.</summary>
    public static Task RunAsync(IBlockImage image, KilledOperation op, bool unmap, int blockSize)
    {
        var offset = (long)op.First * blockSize;
        return op.Kind switch
        {
            'W' => image.WriteAsync(offset, TaggedBlocks.Content(op.Id, op.First, op.Count, blockSize)).AsTask(),
            'Z' => image.WriteZeroesAsync(offset, (long)op.Count * blockSize, unmap).AsTask(),
            _ => image.DiscardAsync(offset, (long)op.Count * blockSize).AsTask(),
        };
    }
}
