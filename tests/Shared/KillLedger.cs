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
        KillViolation? first = null;
        var bad = new List<int>();
        for (var b = 0; b < blocks; b++)
        {
            var block = content.Slice(b * blockSize, blockSize);
            observed[b] = TaggedBlocks.Identify(block, b);
            if (observed[b] == acked[b] || (pending.TryGetValue(b, out var later) && later.Contains(observed[b])))
                continue;
            bad.Add(b);
            first ??= new KillViolation(b, $"block {b} holds {observed[b]} ({TaggedBlocks.Describe(block, b)}), acknowledged {acked[b]}, " +
                $"in flight [{string.Join(", ", pending.GetValueOrDefault(b) ?? [])}]");
        }
        if (first is not null)
        {
            // One block or a run of them, one cluster or many: the whole picture tells a mapping from a torn write.
            return first with { Message = first.Message + $"; {bad.Count} block(s) out of place: {DescribeRuns(bad, observed)}" };
        }
        observed.CopyTo(_baseline, 0);
        return null;
    }

    /// <summary>Runs of consecutive bad blocks as "first-last (what the first holds)", at most sixteen.</summary>
    private static string DescribeRuns(List<int> bad, long[] observed)
    {
        var runs = new List<string>();
        for (var i = 0; i < bad.Count && runs.Count < 16;)
        {
            var j = i;
            while (j + 1 < bad.Count && bad[j + 1] == bad[j] + 1)
                j++;
            runs.Add($"{bad[i]}-{bad[j]} (holds {observed[bad[i]]})");
            i = j + 1;
        }
        return string.Join(", ", runs);
    }
}
