using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// The copy offload's own zero probe (<see cref="Nodes.WriteRequest.RefuseLeadingZeroes"/>): the
/// copy work item reads the source's first page and refuses a range that starts with zeroes,
/// copying nothing, so the mirror writes zeroes there instead of allocating them.
/// </summary>
public sealed class RawFileImageCopyRangeTests : IDisposable
{
    private const int KiB = 1 << 10;
    private const int MiB = 1 << 20;

    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public async Task A_range_starting_with_zeroes_is_refused_for_now_and_nothing_is_copied()
    {
        await using var source = RawFileImage.Create(_dir.PathOf("src.raw"), 4 * MiB);
        await using var target = RawFileImage.Create(_dir.PathOf("dst.raw"), 4 * MiB);
        // Allocated zeroes in the first page, data after it: the probe looks at the first page only.
        var data = new byte[256 * KiB];
        Pattern(256 * KiB - 4 * KiB, 1).CopyTo(data.AsSpan(4 * KiB));
        await source.WriteAsync(MiB, data);

        var refusal = await Assert.ThrowsAsync<CopyRangeRefusedException>(
            () => ((ICopyRangeTarget)target).CopyRangeFromAsync(source, MiB, data.Length, refuseLeadingZeroes: true).AsTask());

        Assert.False(refusal.Permanent); // the next range may be data: keep asking
        Assert.Equal(0, target.AllocatedBytes);
    }

    [Fact]
    public async Task A_range_starting_with_data_is_copied_whole_with_the_probe()
    {
        await using var source = RawFileImage.Create(_dir.PathOf("src.raw"), 4 * MiB);
        await using var target = RawFileImage.Create(_dir.PathOf("dst.raw"), 4 * MiB);
        var data = Pattern(MiB, 2);
        await source.WriteAsync(2 * MiB, data);

        await ((ICopyRangeTarget)target).CopyRangeFromAsync(source, 2 * MiB, MiB, refuseLeadingZeroes: true);

        var back = new byte[MiB];
        await target.ReadAsync(2 * MiB, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Without_the_probe_a_range_of_zeroes_is_copied_as_asked()
    {
        await using var source = RawFileImage.Create(_dir.PathOf("src.raw"), 4 * MiB);
        await using var target = RawFileImage.Create(_dir.PathOf("dst.raw"), 4 * MiB);
        await source.WriteAsync(0, new byte[MiB]); // allocated zeroes

        await ((ICopyRangeTarget)target).CopyRangeFromAsync(source, 0, MiB, refuseLeadingZeroes: false);

        Assert.True(target.AllocatedBytes > 0);
    }
}
