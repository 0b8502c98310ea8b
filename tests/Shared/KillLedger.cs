namespace BlockMirror.Tests.Shared;

/// <summary>One write, zero write or discard of a kill -9 test, on whole blocks: 'W', 'Z' or 'D'.</summary>
internal readonly record struct KilledOperation(long Id, char Kind, int First, int Count);

/// <summary>A block that holds what neither its last acknowledged operation nor one in flight left.</summary>
internal sealed record KillViolation(int Block, string Message);

/// <summary>
/// What each block of an image may hold after each kill -9 of its writer (<see cref="TaggedBlocks"/>
/// content): what the last acknowledged (flushed) operation on it left, or what any operation not yet
/// acknowledged would leave. What it holds then becomes the baseline for the next life.
/// </summary>
internal sealed class KillLedger(int blocks, int blockSize)
{
    private readonly long[] _baseline = new long[blocks]; // an operation id, 0 for zeroes

    /// <summary>Checks a life's outcome; the first block out of place, or null (and the baseline moves on).</summary>
    public KillViolation? Check(IReadOnlyList<KilledOperation> ops, long flushed, ReadOnlySpan<byte> content)
    {
        var acked = (long[])_baseline.Clone();
        var pending = new Dictionary<int, List<long>>();
        foreach (var op in ops)
        {
            var value = op.Kind == 'W' ? op.Id : 0;
            for (var b = op.First; b < op.First + op.Count; b++)
            {
                if (op.Id <= flushed)
                    acked[b] = value;
                else
                    (pending.TryGetValue(b, out var list) ? list : pending[b] = []).Add(value);
            }
        }
        var observed = new long[blocks];
        for (var b = 0; b < blocks; b++)
        {
            var block = content.Slice(b * blockSize, blockSize);
            observed[b] = TaggedBlocks.Identify(block, b);
            if (observed[b] == acked[b] || (pending.TryGetValue(b, out var later) && later.Contains(observed[b])))
                continue;
            return new KillViolation(b, $"block {b} holds {observed[b]} ({TaggedBlocks.Describe(block, b)}), acknowledged {acked[b]}, " +
                $"in flight [{string.Join(", ", pending.GetValueOrDefault(b) ?? [])}]");
        }
        observed.CopyTo(_baseline, 0);
        return null;
    }
}
