using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

/// <summary>
/// Seeded random operation sequences against a bool[] model, checked after every step.
/// </summary>
public class HBitmapPropertyTests
{
    public static TheoryData<long, int> Cases()
    {
        var data = new TheoryData<long, int>();
        foreach (long length in new long[] { 1, 63, 64, 65, 4097, 300_000 })
        {
            foreach (int seed in new[] { 1, 2, 3 })
            {
                data.Add(length, seed);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Random_operations_match_a_bool_array(long length, int seed)
    {
        var rnd = new Random(seed * 7919 + (int)length);
        var model = new bool[length];
        var bitmap = new HBitmap(length);
        int steps = length > 10_000 ? 300 : 600;

        for (int step = 0; step < steps; step++)
        {
            int op = rnd.Next(100);
            var (start, count) = RandomRange(rnd, length);
            string what;
            if (op < 35)
            {
                long expectedNew = 0;
                for (long i = start; i < start + count; i++)
                {
                    expectedNew += model[i] ? 0 : 1;
                    model[i] = true;
                }

                Assert.Equal(expectedNew, bitmap.SetCountNew(start, count));
                what = $"set {start}+{count}";
            }
            else if (op < 70)
            {
                Array.Fill(model, false, (int)start, (int)count);
                bitmap.Reset(start, count);
                what = $"reset {start}+{count}";
            }
            else if (op < 80)
            {
                var other = new HBitmap(length);
                for (int k = rnd.Next(4); k > 0; k--)
                {
                    var (s, c) = RandomRange(rnd, length);
                    other.Set(s, c);
                    for (long i = s; i < s + c; i++)
                    {
                        model[i] = true;
                    }
                }

                bitmap.Or(other);
                what = "or";
            }
            else if (op < 88)
            {
                var data = new byte[bitmap.SerializedLength];
                bitmap.Serialize(data);
                HBitmap back = HBitmap.Deserialize(length, data);
                Assert.Equal(bitmap.Sha256Hex(), back.Sha256Hex());
                if (rnd.Next(2) == 0)
                {
                    bitmap = back;
                }
                else
                {
                    bitmap.CopyFrom(back.Clone());
                }

                what = "serialize round trip";
            }
            else if (op < 92)
            {
                bitmap.Set(start, count);
                for (long i = start; i < start + count; i++)
                {
                    model[i] = true;
                }

                what = $"plain set {start}+{count}";
            }
            else if (op < 96)
            {
                bitmap.ResetAll();
                Array.Clear(model);
                what = "reset all";
            }
            else
            {
                bitmap.SetAll();
                Array.Fill(model, true);
                what = "set all";
            }

            CheckAgainstModel(rnd, bitmap, model, $"step {step}: {what}");
        }
    }

    private static (long Start, long Count) RandomRange(Random rnd, long length)
    {
        // Bias starts and ends onto word boundaries, where off-by-one bugs live.
        long start = rnd.Next(3) == 0
            ? Math.Clamp(rnd.NextInt64(0, length / 64 + 1) * 64 + rnd.Next(-1, 2), 0, length)
            : rnd.NextInt64(0, length + 1);
        long room = length - start;
        long maxCount = rnd.Next(4) switch
        {
            0 => Math.Min(room, 2),
            1 => Math.Min(room, 130),
            2 => Math.Min(room, 5000),
            _ => room,
        };
        return (start, rnd.NextInt64(0, maxCount + 1));
    }

    private static void CheckAgainstModel(Random rnd, HBitmap bitmap, bool[] model, string context)
    {
        long length = model.Length;
        long expectedCount = model.AsSpan().Count(true);
        Assert.True(expectedCount == bitmap.Count, $"{context}: count {bitmap.Count} != {expectedCount}");
        Assert.True(bitmap.CheckInvariants(), $"{context}: invariants");

        for (int k = 0; k < 8; k++)
        {
            long p = rnd.NextInt64(0, length);
            Assert.True(model[p] == bitmap.Get(p), $"{context}: get {p}");
        }

        for (int k = 0; k < 4; k++)
        {
            long from = rnd.NextInt64(0, length + 1);
            Assert.True(ModelNext(model, from, true) == bitmap.NextSet(from), $"{context}: nextSet {from}");
            Assert.True(ModelNext(model, from, false) == bitmap.NextClear(from), $"{context}: nextClear {from}");

            long maxCount = rnd.Next(3) switch { 0 => 1, 1 => rnd.NextInt64(1, 200), _ => long.MaxValue };
            long s = ModelNext(model, from, true);
            bool found = bitmap.NextSetRun(from, maxCount, out long runStart, out long runCount);
            Assert.True((s >= 0) == found, $"{context}: nextSetRun found {from}");
            if (found)
            {
                long e = ModelNext(model, s, false);
                long expectedRun = Math.Min(e < 0 ? length - s : e - s, maxCount);
                Assert.True(s == runStart && expectedRun == runCount, $"{context}: nextSetRun {from},{maxCount} gave {runStart}+{runCount}, want {s}+{expectedRun}");
            }
        }
    }

    private static long ModelNext(bool[] model, long from, bool value)
    {
        // A vectorised linear scan keeps the model obviously correct yet fast enough.
        int i = model.AsSpan((int)from).IndexOf(value);
        return i < 0 ? -1 : from + i;
    }
}
