namespace BlockMirror.Core.Jobs;

/// <summary>
/// QEMU's <c>ratelimit.h</c> over bytes: a quota of speed/10 bytes per 100 ms slice. Work is
/// accounted after it was dispatched, so one chunk larger than the quota still passes and the
/// debt is paid by a longer delay afterwards (speed=1 makes a job "very slow", not stuck before
/// its first chunk). Speed 0 disables the limit. Thread-safe: the loop accounts and asks for the
/// delay, set-speed changes the speed at any time (and starts a fresh slice).
/// </summary>
/// <remarks>
/// Not System.Threading.RateLimiting's TokenBucketRateLimiter (a plain NuGet package the core could
/// take), measured against this one in the mirror loop's pattern (bench/ratelimit, bench/README.md
/// "Speed limit"): a bucket cannot go into debt (a permit count above its limit throws), so a chunk
/// larger than the slice's quota needs a debt counter on top, paid in quota-sized acquisitions; its
/// replenishment runs on the system clock, not the job's <see cref="TimeProvider"/>; and it held
/// 0.57–0.94× of the set speed at 1–100 MiB/s where this one held 0.94–1.05× (but 1.3–1.5× in some
/// runs at 10 MiB/s with 1 MiB chunks, where a chunk is exactly one slice's quota).
/// </remarks>
internal sealed class ByteRateLimiter
{
    private static readonly TimeSpan Slice = TimeSpan.FromMilliseconds(100);

    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private long _sliceQuota;
    private long _sliceStart;
    private long _sliceEnd;
    private long _dispatched;

    public ByteRateLimiter(TimeProvider time, long bytesPerSecond)
    {
        _time = time;
        SetSpeed(bytesPerSecond);
    }

    /// <summary>Sets the speed in bytes per second (0 = unlimited) and starts a new slice.</summary>
    public void SetSpeed(long bytesPerSecond)
    {
        lock (_lock)
        {
            _sliceQuota = bytesPerSecond <= 0 ? 0 : Math.Max(bytesPerSecond / 10, 1);
            _sliceStart = _sliceEnd = 0;
            _dispatched = 0;
        }
    }

    /// <summary>
    /// Adds dispatched bytes to the current slice and extends the slice by any debt at once, as
    /// QEMU's ratelimit_calculate_delay accounts and extends in one call. The loop accounts chunk by
    /// chunk while it dispatches a claim; had the slice ended meanwhile, the next <see cref="Delay"/>
    /// would take it as paid and forgive the whole claim's debt (a speed=1 job copied its second
    /// claim at once whenever dispatching the first took longer than one slice).
    /// </summary>
    public void Account(long bytes)
    {
        lock (_lock)
        {
            if (_sliceQuota == 0)
                return;
            var now = _time.GetTimestamp();
            if (_sliceEnd < now)
                StartSliceLocked(now);
            _dispatched += bytes;
            if (_dispatched >= _sliceQuota)
                _sliceEnd = _sliceStart + (long)((double)_dispatched / _sliceQuota * SliceTicks);
        }
    }

    /// <summary>How long to wait before dispatching more (zero when the quota allows it now).</summary>
    public TimeSpan Delay()
    {
        lock (_lock)
        {
            if (_sliceQuota == 0)
                return TimeSpan.Zero;
            var now = _time.GetTimestamp();
            if (_sliceEnd < now)
            {
                // The last (possibly extended) slice is over: its debt is paid.
                StartSliceLocked(now);
                return TimeSpan.Zero;
            }
            return _dispatched < _sliceQuota ? TimeSpan.Zero : _time.GetElapsedTime(now, _sliceEnd);
        }
    }

    private long SliceTicks => (long)(Slice.TotalSeconds * _time.TimestampFrequency);

    private void StartSliceLocked(long now)
    {
        _sliceStart = now;
        _sliceEnd = now + SliceTicks;
        _dispatched = 0;
    }
}
