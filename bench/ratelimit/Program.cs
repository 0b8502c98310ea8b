using BlockMirror.Core.Jobs;
using System.Diagnostics;
using System.Threading.RateLimiting;

// The mirror loop's use of a limiter: ask for the delay, wait it, else dispatch a chunk and account it.
// Measures the rate achieved over a window and the largest amount dispatched in any 100 ms.
var seconds = double.Parse(args.Length > 0 ? args[0] : "4");
var cases = new (long Speed, long Chunk)[] { (4L << 20, 1L << 20), (10L << 20, 1L << 20), (100L << 20, 1L << 20), (1L << 20, 64L << 10), (64L << 10, 1L << 20) };
foreach (var (speed, chunk) in cases)
{
    foreach (var kind in new[] { "qemu", "bucket", "qemu", "bucket" })
    {
        ILimiter limiter = kind == "qemu" ? new QemuLimiter(speed) : new BucketLimiter(speed);
        var (rate, maxWindow) = await RunAsync(limiter, chunk, seconds);
        Console.WriteLine($"{kind,-6} speed {speed / 1024,7} KiB/s chunk {chunk / 1024,5} KiB: achieved {rate / 1024,9:F0} KiB/s ({rate / speed:F3}x), max in 100 ms {maxWindow / 1024,6} KiB");
    }
}

static async Task<(double Rate, long MaxWindow)> RunAsync(ILimiter limiter, long chunk, double seconds)
{
    var sw = Stopwatch.StartNew();
    var stamps = new List<(double T, long Bytes)>();
    long total = 0;
    while (sw.Elapsed.TotalSeconds < seconds)
    {
        var delay = limiter.Delay();
        if (delay > TimeSpan.Zero)
        {
            await Task.Delay(delay);
            continue;
        }
        total += chunk;
        stamps.Add((sw.Elapsed.TotalSeconds, chunk));
        limiter.Account(chunk);
    }
    var elapsed = sw.Elapsed.TotalSeconds;
    long max = 0;
    for (var i = 0; i < stamps.Count; i++)
    {
        long sum = 0;
        for (var j = i; j < stamps.Count && stamps[j].T < stamps[i].T + 0.1; j++)
            sum += stamps[j].Bytes;
        max = Math.Max(max, sum);
    }
    return (total / elapsed, max);
}

interface ILimiter
{
    TimeSpan Delay();
    void Account(long bytes);
}

sealed class QemuLimiter(long speed) : ILimiter
{
    private readonly ByteRateLimiter _l = new(TimeProvider.System, speed);
    public TimeSpan Delay() => _l.Delay();
    public void Account(long bytes) => _l.Account(bytes);
}

/// <summary>System.Threading.RateLimiting's token bucket over 100 ms slices, with the debt of a chunk larger than the quota paid in slices afterwards.</summary>
sealed class BucketLimiter : ILimiter
{
    private static readonly TimeSpan Slice = TimeSpan.FromMilliseconds(100);
    private readonly TokenBucketRateLimiter _bucket;
    private readonly int _quota;
    private long _debt;

    public BucketLimiter(long speed)
    {
        _quota = (int)Math.Min(Math.Max(speed / 10, 1), int.MaxValue);
        _bucket = new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions
        {
            TokenLimit = _quota, TokensPerPeriod = _quota, ReplenishmentPeriod = Slice, QueueLimit = 0, AutoReplenishment = true,
        });
    }

    public void Account(long bytes) => _debt += bytes;

    public TimeSpan Delay()
    {
        while (_debt > 0)
        {
            var n = (int)Math.Min(_debt, _quota);
            using var lease = _bucket.AttemptAcquire(n);
            if (!lease.IsAcquired)
                return lease.TryGetMetadata(MetadataName.RetryAfter, out var retry) && retry > TimeSpan.Zero ? retry : Slice;
            _debt -= n;
        }
        return TimeSpan.Zero;
    }
}
