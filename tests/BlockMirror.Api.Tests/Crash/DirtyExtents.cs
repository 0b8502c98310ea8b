namespace BlockMirror.Api.Tests.Crash;

/// <summary>What the crash harnesses ask of a bitmap's dirty extents after a restart.</summary>
internal static class DirtyExtents
{
    /// <summary>Whether every byte of [offset, offset+length) lies in a dirty extent (coalesced, in order).</summary>
    public static bool Covered(List<(long Offset, long Length)> dirty, long offset, long length)
    {
        var end = offset + length;
        foreach (var (o, l) in dirty)
        {
            if (o + l <= offset)
                continue;
            if (o > offset)
                return false;
            offset = o + l;
            if (offset >= end)
                return true;
        }
        return false;
    }
}
