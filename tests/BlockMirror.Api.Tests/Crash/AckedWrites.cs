namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// The test's record of acknowledged writes, per persistent bitmap: since the last point where the
/// bitmap may legitimately have lost them (a clear or a successful mirror that cleared it). A bitmap
/// can be suspended while an operation that may clear it is in flight: writes acknowledged meanwhile
/// prove nothing about it.
/// </summary>
internal sealed class AckedWrites
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, List<(long Offset, long Length)>> _writes = new(StringComparer.Ordinal);
    private readonly HashSet<string> _suspended = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _resumedAt = new(StringComparer.Ordinal);
    private long _epoch;

    public AckedWrites(params string[] bitmaps)
    {
        foreach (var b in bitmaps)
            _writes[b] = [];
    }

    public long Total { get; private set; }

    /// <summary>
    /// Moves on at every <see cref="Suspend"/> and <see cref="Resume"/>. A writer reads it before it
    /// sends a write: the write counts for a bitmap only if it was sent after the bitmap's last resume
    /// (an acknowledgement that arrives after the resume may belong to a write the operation saw).
    /// </summary>
    public long Epoch => Interlocked.Read(ref _epoch);

    public void Record(long offset, long length, long sentAtEpoch)
    {
        lock (_lock)
        {
            Total++;
            foreach (var (name, list) in _writes)
            {
                if (!_suspended.Contains(name) && sentAtEpoch >= _resumedAt.GetValueOrDefault(name))
                    list.Add((offset, length));
            }
        }
    }

    /// <summary>Forgets the bitmap's writes and stops recording for it (an operation that may clear it is in flight).</summary>
    public void Suspend(string bitmap)
    {
        lock (_lock)
        {
            _writes[bitmap].Clear();
            _suspended.Add(bitmap);
            Interlocked.Increment(ref _epoch);
        }
    }

    /// <summary>Records for the bitmap again, from now on.</summary>
    public void Resume(string bitmap)
    {
        lock (_lock)
        {
            _suspended.Remove(bitmap);
            _resumedAt[bitmap] = Interlocked.Increment(ref _epoch);
        }
    }

    public IReadOnlyList<(long Offset, long Length)> Of(string bitmap)
    {
        lock (_lock)
            return [.. _writes[bitmap]];
    }
}
