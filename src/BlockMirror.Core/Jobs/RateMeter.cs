namespace BlockMirror.Core.Jobs;

/// <summary>
/// Bytes per second over a sliding window of a few one-second buckets (copy rate, dirty rate).
/// Cheap to feed from many threads; the rate is the window's bytes over the time it covers.
/// </summary>
internal sealed class RateMeter
{
    private const int Buckets = 5;

    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private readonly long _start;
    private readonly long[] _second = new long[Buckets];
    private readonly long[] _bytes = new long[Buckets];

    public RateMeter(TimeProvider time)
    {
        _time = time;
        _start = time.GetTimestamp();
        Array.Fill(_second, -1);
    }

    public void Add(long bytes)
    {
        if (bytes <= 0)
            return;
        var second = CurrentSecond();
        var i = (int)(second % Buckets);
        lock (_lock)
        {
            if (_second[i] != second)
            {
                _second[i] = second;
                _bytes[i] = 0;
            }
            _bytes[i] += bytes;
        }
    }

    /// <summary>Bytes per second over the last few seconds (or since the start, if shorter).</summary>
    public long Rate()
    {
        var elapsed = _time.GetElapsedTime(_start).TotalSeconds;
        var second = (long)elapsed;
        long sum = 0;
        lock (_lock)
        {
            for (var i = 0; i < Buckets; i++)
            {
                if (_second[i] >= 0 && _second[i] > second - Buckets)
                    sum += _bytes[i];
            }
        }
        // The window holds the current partial second plus up to Buckets-1 full ones.
        var covered = Math.Min(elapsed, Buckets - 1 + (elapsed - second));
        // Under a second of history counts as one second, so a young job's rate is not inflated.
        return (long)(sum / Math.Max(covered, 1.0));
    }

    private long CurrentSecond() => (long)_time.GetElapsedTime(_start).TotalSeconds;
}
