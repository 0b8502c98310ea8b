using BenchmarkDotNet.Attributes;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Bench;

/// <summary>
/// DirtyBitmap (locking, byte ranges) on 1 TiB at 64 KiB: the write path's MarkDirty must
/// not allocate; merge and iteration are what mirror and incremental backup use.
/// </summary>
[MemoryDiagnoser]
[ShortRunJob]
public class DirtyBitmapBenchmarks
{
    /// <summary>1 TiB.</summary>
    public const long Size = 1L << 40;

    private const int Granularity = 65536;
    private const long GiB = 1L << 30;

    private DirtyBitmap _work = null!;
    private DirtyBitmap _sparse = null!;
    private DirtyBitmap _full = null!;
    private DirtyBitmap _fullTarget = null!;
    private DirtyBitmap _coarseSparse = null!;
    private DirtyBitmap _mergeTarget = null!;
    private long _offset;

    /// <summary>Builds the bitmaps once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _work = new DirtyBitmap("work", Size, Granularity);
        _sparse = new DirtyBitmap("sparse", Size, Granularity);
        _sparse.RestoreBits(HBitmapBenchmarks.Sparse(Size / Granularity, seed: 42));
        _full = new DirtyBitmap("full", Size, Granularity);
        _full.MarkAll();
        _fullTarget = new DirtyBitmap("target", Size, Granularity);
        _fullTarget.MarkAll();

        // 1% of a 1 MiB-granularity bitmap, merged into a 64 KiB one (QEMU's sparse merge path).
        _coarseSparse = new DirtyBitmap("coarse", Size, 1 << 20);
        _coarseSparse.RestoreBits(HBitmapBenchmarks.Sparse(Size >> 20, seed: 7));
        _mergeTarget = new DirtyBitmap("merge-target", Size, Granularity);
    }

    /// <summary>One 64 KiB guest write marking a fresh place each call (steady-state mix).</summary>
    [Benchmark]
    public long MarkDirty_64KiB()
    {
        // Stride by a large odd number of granules so successive writes land far apart.
        _offset = (_offset + 7919L * Granularity) & (Size - 1);
        return _work.MarkDirty(_offset, Granularity);
    }

    /// <summary>A 64 KiB write marked and then cleared (as a mirror copy would).</summary>
    [Benchmark]
    public void MarkThenClear_64KiB()
    {
        _fullTarget.ClearDirty(5 * GiB, Granularity);
        _fullTarget.MarkDirty(5 * GiB, Granularity);
    }

    /// <summary>Mark then clear a 1 GiB byte range.</summary>
    [Benchmark]
    public void MarkThenClear_1GiB()
    {
        _work.MarkDirty(3 * GiB + 4096, GiB);
        _work.ClearDirty(3 * GiB, 2 * GiB);
    }

    /// <summary>Iterates every dirty run of the 1% sparse bitmap, 64 MiB at most per run.</summary>
    [Benchmark]
    public long NextDirtyRun_IterateSparse()
    {
        long total = 0;
        long pos = 0;
        while (pos < Size && _sparse.NextDirtyRun(pos, 64L << 20, out long o, out long l))
        {
            total += l;
            pos = o + l;
        }

        return total;
    }

    /// <summary>GetExtents over the whole 1% sparse bitmap (block-status style listing).</summary>
    [Benchmark]
    public int GetExtents_Sparse() => _sparse.GetExtents(0, Size).Count;

    /// <summary>Merge of a full bitmap into a full one, same granularity (snapshot + OR).</summary>
    [Benchmark]
    public void MergeFrom_SameGranularity_Full() => _fullTarget.MergeFrom(_full);

    /// <summary>Merge of a 1% sparse 1 MiB-granularity bitmap into a 64 KiB one.</summary>
    [Benchmark]
    public void MergeFrom_DifferentGranularity_Sparse() => _mergeTarget.MergeFrom(_coarseSparse);

    /// <summary>Lock-free dirty byte count.</summary>
    [Benchmark]
    public long Count() => _full.Count;

    /// <summary>MarkAll then Clear of the whole device.</summary>
    [Benchmark]
    public void MarkAllThenClear()
    {
        _work.MarkAll();
        _work.Clear();
    }

    /// <summary>SHA-256 of the full bitmap, under its lock.</summary>
    [Benchmark]
    public string Sha256() => _full.Sha256Hex();
}
