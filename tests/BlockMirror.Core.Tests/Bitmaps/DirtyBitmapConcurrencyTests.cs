using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

/// <summary>Concurrent marking and merging keep counts exact and never deadlock.</summary>
public class DirtyBitmapConcurrencyTests
{
    [Fact]
    public void Many_threads_marking_disjoint_ranges_give_an_exact_count()
    {
        const int threads = 8;
        const int granularity = 4096;
        const long granules = 200_003;
        long size = granules * granularity - 123;
        var bitmap = new DirtyBitmap("c", size, granularity);
        long newlySet = 0;

        // Thread t owns granules t, t+threads, …: neighbours share words, so the words and the
        // upper levels are contended exactly where a lost update would show.
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            long mine = 0;
            for (long g = t; g < granules; g += threads)
            {
                long length = Math.Min(granularity, size - g * granularity);
                mine += bitmap.MarkDirty(g * granularity, length);
                _ = bitmap.Count;
            }

            Interlocked.Add(ref newlySet, mine);
        });

        Assert.Equal(granules, newlySet);
        Assert.Equal(granules, bitmap.DirtyGranules);
        Assert.Equal(size, bitmap.Count);
        Assert.Equal([(0L, size)], bitmap.GetExtents(0, size));
    }

    [Fact]
    public void Overlapping_marks_count_each_granule_once()
    {
        const int threads = 6;
        const int granularity = 512;
        long size = 1_000_000L * granularity;
        var bitmap = new DirtyBitmap("o", size, granularity);
        long newlySet = 0;

        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
        {
            var rnd = new Random(t);
            long mine = 0;
            for (int i = 0; i < 20_000; i++)
            {
                long offset = rnd.NextInt64(0, size - 200_000);
                mine += bitmap.MarkDirty(offset, rnd.NextInt64(1, 200_000));
            }

            Interlocked.Add(ref newlySet, mine);
        });

        Assert.Equal(bitmap.DirtyGranules, newlySet);
        long fromExtents = bitmap.GetExtents(0, size).Sum(e => e.Length);
        Assert.Equal(bitmap.Count, fromExtents);
    }

    [Fact]
    public async Task Opposite_merges_do_not_deadlock()
    {
        long size = 1L << 30;
        var a = new DirtyBitmap("a", size, 65536);
        var b = new DirtyBitmap("b", size, 4096);
        a.MarkDirty(0, 1 << 20);
        b.MarkDirty(size - (1 << 20), 1 << 20);

        Task ta = Task.Run(() => { for (int i = 0; i < 200; i++) { a.MergeFrom(b); } });
        Task tb = Task.Run(() => { for (int i = 0; i < 200; i++) { b.MergeFrom(a); } });
        // A deadlock would surface as a TimeoutException rather than a hung run.
        await Task.WhenAll(ta, tb).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(2L << 20, a.Count);
        Assert.Equal(2L << 20, b.Count);
    }
}
