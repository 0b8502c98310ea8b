using BenchmarkDotNet.Attributes;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Bench;

/// <summary>
/// HBitmap on the DESIGN's reference size: 1 TiB at 64 KiB granularity = 2^24 bits (2 MiB).
/// Targets: set/clear/merge/count ≤ 2 ms, memory ≈ bits/8.
/// </summary>
[MemoryDiagnoser]
[ShortRunJob]
public class HBitmapBenchmarks
{
    /// <summary>2^24 granules: 1 TiB / 64 KiB.</summary>
    public const long Bits = 1L << 24;

    /// <summary>1 GiB / 64 KiB.</summary>
    public const long GiBBits = 1L << 14;

    // Deliberately not word-aligned, so both partial-word edges are exercised.
    private const long RangeStart = 3_000_007;

    private HBitmap _work = null!;
    private HBitmap _alreadySet = null!;
    private HBitmap _full = null!;
    private HBitmap _fullOther = null!;
    private HBitmap _sparse = null!;

    /// <summary>Builds the bitmaps once; the sparse one has ~1% of bits in scattered runs.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _work = new HBitmap(Bits);
        _alreadySet = new HBitmap(Bits);
        _alreadySet.Set(RangeStart, GiBBits);
        _full = new HBitmap(Bits);
        _full.SetAll();
        _fullOther = _full.Clone();
        _sparse = Sparse(Bits, seed: 42);
    }

    /// <summary>About 1% of the bits set, in runs of 1–32 bits at random places.</summary>
    public static HBitmap Sparse(long bits, int seed)
    {
        var rnd = new Random(seed);
        var b = new HBitmap(bits);
        while (b.Count < bits / 100)
        {
            long len = rnd.Next(1, 33);
            b.Set(rnd.NextInt64(0, bits - len), len);
        }

        return b;
    }

    /// <summary>Set of a clean 1 GiB range followed by its reset (the pair bounds each).</summary>
    [Benchmark]
    public void SetThenReset_1GiB()
    {
        _work.Set(RangeStart, GiBBits);
        _work.Reset(RangeStart, GiBBits);
    }

    /// <summary>Set of a 1 GiB range that is already dirty (the common re-write case).</summary>
    [Benchmark]
    public long SetCountNew_1GiB_AlreadySet() => _alreadySet.SetCountNew(RangeStart, GiBBits);

    /// <summary>Reset of a 1 GiB range that is already clean.</summary>
    [Benchmark]
    public void Reset_1GiB_AlreadyClear() => _work.Reset(RangeStart, GiBBits);

    /// <summary>Set of the whole 1 TiB as one range, then its reset.</summary>
    [Benchmark]
    public void SetThenReset_1TiB()
    {
        _work.Set(0, Bits);
        _work.Reset(0, Bits);
    }

    /// <summary>SetAll then ResetAll (whole-bitmap fast paths).</summary>
    [Benchmark]
    public void SetAllThenResetAll()
    {
        _work.SetAll();
        _work.ResetAll();
    }

    /// <summary>Walks every set bit of the 1% sparse bitmap with NextSet.</summary>
    [Benchmark]
    public long NextSet_IterateSparse()
    {
        long n = 0;
        long pos = 0;
        long p;
        while (pos < Bits && (p = _sparse.NextSet(pos)) >= 0)
        {
            n++;
            pos = p + 1;
        }

        return n;
    }

    /// <summary>Walks every run of the 1% sparse bitmap with NextSetRun (64 MiB cap per run).</summary>
    [Benchmark]
    public long NextSetRun_IterateSparse()
    {
        long n = 0;
        long pos = 0;
        while (pos < Bits && _sparse.NextSetRun(pos, 1024, out long s, out long c))
        {
            n += c;
            pos = s + c;
        }

        return n;
    }

    /// <summary>OR of two full 1 TiB bitmaps (all levels plus count recompute).</summary>
    [Benchmark]
    public void Or_Full() => _full.Or(_fullOther);

    /// <summary>The O(1) count.</summary>
    [Benchmark]
    public long Count() => _full.Count;

    /// <summary>SHA-256 over the 2 MiB last level.</summary>
    [Benchmark]
    public string Sha256() => _full.Sha256Hex();

    /// <summary>Clone (what a merge snapshot or transaction backup costs).</summary>
    [Benchmark]
    public HBitmap Clone() => _full.Clone();

    /// <summary>Allocating a 1 TiB @ 64 KiB bitmap: "Allocated" is its memory footprint.</summary>
    [Benchmark]
    public HBitmap Allocate_1TiB() => new(Bits);
}
