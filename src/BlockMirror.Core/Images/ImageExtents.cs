using System.Runtime.CompilerServices;

namespace BlockMirror.Core.Images;

/// <summary>Walks an image's block status over a range.</summary>
public static class ImageExtents
{
    /// <summary>
    /// The extents covering exactly <c>[offset, offset + length)</c>, in order, with adjacent
    /// extents of the same kind merged (an image may answer in pieces; callers want runs).
    /// Consecutive results therefore always differ in kind.
    /// </summary>
    public static async IAsyncEnumerable<ImageExtent> EnumerateAsync(
        IBlockImage image,
        long offset,
        long length,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);

        var end = offset + length;
        var pos = offset;
        ImageExtent? run = null;
        while (pos < end)
        {
            ct.ThrowIfCancellationRequested();
            var e = await image.GetBlockStatusAsync(pos, end - pos, ct).ConfigureAwait(false);
            // A zero-length answer would loop forever; an overlong one would overrun the range.
            if (e.Offset != pos || e.Length <= 0)
                throw new InvalidOperationException($"Block status of '{image.Location}' at {pos} returned [{e.Offset}, +{e.Length})");
            var len = Math.Min(e.Length, end - pos);

            if (run is { } r && r.Kind == e.Kind)
            {
                run = r with { Length = r.Length + len };
            }
            else
            {
                if (run is { } done)
                    yield return done;
                run = new ImageExtent(pos, len, e.Kind);
            }
            pos += len;
        }
        if (run is { } last)
            yield return last;
    }
}
