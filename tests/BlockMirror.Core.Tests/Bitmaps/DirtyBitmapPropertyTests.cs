using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

/// <summary>
/// Seeded random sequences against a byte-level model: model[i] says whether byte i lies in
/// a dirty granule, and every operation is written the naive way from the QEMU semantics.
/// </summary>
public class DirtyBitmapPropertyTests
{
    public static TheoryData<long, int, int> Cases()
    {
        var data = new TheoryData<long, int, int>();
        foreach ((long size, int granularity) in new (long, int)[]
                 {
                     (512, 512), (1, 512), (4096 * 3 + 1, 512), (40_000, 1024),
                     (65_536 * 3 + 700, 4096), (300_000, 65_536), (64 * 512 * 3 + 512, 512),
                     (512 * 5000 + 17, 512),
                 })
        {
            foreach (int seed in new[] { 11, 12 })
            {
                data.Add(size, granularity, seed);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Random_operations_match_a_byte_model(long size, int granularity, int seed)
    {
        var rnd = new Random(seed * 31 + (int)size + granularity);
        var model = new bool[size];
        var bitmap = new DirtyBitmap("p", size, granularity);

        for (int step = 0; step < 250; step++)
        {
            int op = rnd.Next(100);
            var (offset, length) = RandomRange(rnd, size, granularity);
            string what = $"step {step} op {op} {offset}+{length}";
            if (op < 40)
            {
                long before = Granules(model, granularity);
                ModelMark(model, granularity, offset, length);
                Assert.Equal(Granules(model, granularity) - before, bitmap.MarkDirty(offset, length));
            }
            else if (op < 70)
            {
                ModelClear(model, granularity, offset, length);
                bitmap.ClearDirty(offset, length);
            }
            else if (op < 85)
            {
                // Merge from a bitmap of a random granularity, dirtied at random.
                int sg = 512 << rnd.Next(6);
                var source = new DirtyBitmap("s", size, sg);
                var sourceModel = new bool[size];
                for (int k = rnd.Next(1, 4); k > 0; k--)
                {
                    var (o, l) = RandomRange(rnd, size, sg);
                    source.MarkDirty(o, l);
                    ModelMark(sourceModel, sg, o, l);
                }

                foreach (var (o, l) in ModelRuns(sourceModel, 0, size))
                {
                    ModelMark(model, granularity, o, l);
                }

                bitmap.MergeFrom(source);
                what += $" merge g={sg}";
            }
            else if (op < 90)
            {
                var copy = new DirtyBitmap("c", size, granularity);
                copy.Deserialize(bitmap.Serialize());
                Assert.Equal(bitmap.Sha256Hex(), copy.Sha256Hex());
                Assert.Equal(bitmap.Count, copy.Count);
                bitmap.RestoreBits(copy.SnapshotBits());
            }
            else if (op < 95)
            {
                Array.Clear(model);
                bitmap.Clear();
            }
            else
            {
                Array.Fill(model, true);
                bitmap.MarkAll();
            }

            Check(rnd, bitmap, model, granularity, what);
        }
    }

    private static (long Offset, long Length) RandomRange(Random rnd, long size, int granularity)
    {
        long offset = rnd.Next(3) == 0
            ? Math.Clamp(rnd.NextInt64(0, size / granularity + 1) * granularity + rnd.Next(-1, 2), 0, size)
            : rnd.NextInt64(0, size + 1);
        long room = size - offset;
        long max = rnd.Next(3) switch
        {
            0 => Math.Min(room, granularity + 1),
            1 => Math.Min(room, 5L * granularity),
            _ => room,
        };
        long length = rnd.Next(4) == 0
            ? Math.Min(room, rnd.NextInt64(0, 6) * granularity)
            : rnd.NextInt64(0, max + 1);
        return (offset, length);
    }

    private static void Check(Random rnd, DirtyBitmap bitmap, bool[] model, int granularity, string what)
    {
        long size = model.Length;
        Assert.True(model.AsSpan().Count(true) == bitmap.Count, $"{what}: count {bitmap.Count}");
        Assert.Equal(Granules(model, granularity), bitmap.DirtyGranules);

        for (int k = 0; k < 3; k++)
        {
            var (offset, length) = RandomRange(rnd, size, granularity);
            Assert.Equal(ModelRuns(model, offset, offset + length), bitmap.GetExtents(offset, length));

            bool any = bitmap.TryGetFirstExtent(offset, length, out long eo, out long el, out bool dirty);
            Assert.Equal(length > 0, any);
            if (any)
            {
                long end = offset;
                while (end < offset + length && model[end] == model[offset])
                {
                    end++;
                }

                Assert.True((offset, end - offset, model[offset]) == (eo, el, dirty), $"{what}: first extent at {offset}");
            }

            if (size > 0)
            {
                long p = rnd.NextInt64(0, size);
                Assert.Equal(model[p], bitmap.IsDirty(p));
            }

            long from = rnd.NextInt64(0, size + 1);
            long maxLength = rnd.Next(3) switch { 0 => 1, 1 => rnd.NextInt64(1, 4L * granularity), _ => long.MaxValue };
            bool found = bitmap.NextDirtyRun(from, maxLength, out long ro, out long rl);
            long granuleStart = from / granularity * granularity;
            var run = from == size ? default : ModelRuns(model, granuleStart, size).FirstOrDefault();
            Assert.True(found == (run.Length > 0), $"{what}: next run from {from}");
            if (found)
            {
                long cap = Math.Max(maxLength / granularity, 1) * granularity;
                Assert.True((run.Offset, Math.Min(run.Length, cap)) == (ro, rl), $"{what}: next run from {from} max {maxLength}");
            }
        }
    }

    private static void ModelMark(bool[] model, int granularity, long offset, long length)
    {
        if (length == 0)
        {
            return;
        }

        long start = offset / granularity * granularity;
        long end = Math.Min((offset + length + granularity - 1) / granularity * granularity, model.Length);
        Array.Fill(model, true, (int)start, (int)(end - start));
    }

    private static void ModelClear(bool[] model, int granularity, long offset, long length)
    {
        for (long g = 0; g * granularity < model.Length; g++)
        {
            long gs = g * granularity;
            long ge = Math.Min(gs + granularity, model.Length);
            if (gs >= offset && ge <= offset + length)
            {
                Array.Fill(model, false, (int)gs, (int)(ge - gs));
            }
        }
    }

    private static long Granules(bool[] model, int granularity)
    {
        long n = 0;
        for (long i = 0; i < model.Length; i += granularity)
        {
            n += model[i] ? 1 : 0;
        }

        return n;
    }

    private static List<(long Offset, long Length)> ModelRuns(bool[] model, long from, long to)
    {
        var runs = new List<(long Offset, long Length)>();
        ReadOnlySpan<bool> span = model.AsSpan(0, (int)to);
        int i = (int)from;
        while (i < to)
        {
            int s = span[i..].IndexOf(true);
            if (s < 0)
            {
                break;
            }

            s += i;
            int e = span[s..].IndexOf(false);
            i = e < 0 ? (int)to : s + e;
            runs.Add((s, i - s));
        }

        return runs;
    }
}
