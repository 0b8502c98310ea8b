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

    public AckedWrites(params string[] bitmaps)
    {
        foreach (var b in bitmaps)
            _writes[b] = [];
    }

    public long Total { get; private set; }

    public void Record(long offset, long length)
    {
        lock (_lock)
        {
            Total++;
            foreach (var (name, list) in _writes)
            {
                if (!_suspended.Contains(name))
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
        }
    }

    /// <summary>Records for the bitmap again, from now on.</summary>
    public void Resume(string bitmap)
    {
        lock (_lock)
            _suspended.Remove(bitmap);
    }

    public IReadOnlyList<(long Offset, long Length)> Of(string bitmap)
    {
        lock (_lock)
            return [.. _writes[bitmap]];
    }
}
