using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// <see cref="Qcow2Image.TryWriteInline"/>: an NBD connection's small write on its own thread, taken
/// only where it is an in-place write that needs no wait; everything else is left to the asynchronous path.
/// </summary>
public sealed class Qcow2InlineWriteTests
{
    private const long Size = 4L << 20;
    private const int Cluster = 65536;

    [Fact]
    public async Task Writes_inline_only_into_an_allocated_cluster_and_what_it_wrote_reads_back_after_reopen()
    {
        using var dir = new TempImageDirectory();
        var data = new byte[4096];
        new Random(11).NextBytes(data);
        await using (var image = Qcow2Image.Create(dir.PathOf("a.qcow2"), Size))
        {
            IInlineIo inline = image;
            // Unallocated: an allocation, never inline.
            Assert.False(inline.TryWriteInline(Cluster + 512, data));
            await image.WriteAsync(Cluster, new byte[Cluster].Select((_, i) => (byte)(i | 1)).ToArray());
            Assert.True(inline.TryWriteInline(Cluster + 512, data));
            // Across two clusters, or into a zero cluster: the asynchronous path.
            Assert.False(inline.TryWriteInline((2 * Cluster) - 100, data));
            await image.WriteZeroesAsync(3 * Cluster, Cluster, mayUnmap: false);
            Assert.False(inline.TryWriteInline(3 * Cluster, data));
            // Past the end: the asynchronous path reports it. Reads always go that way.
            Assert.False(inline.TryWriteInline(Size - 100, data));
            Assert.False(inline.TryReadCached(Cluster, new byte[512]));
        }
        await using var reopened = Qcow2Image.Open(dir.PathOf("a.qcow2"), readOnly: true);
        var back = new byte[Cluster];
        await reopened.ReadAsync(Cluster, back);
        Assert.Equal(data, back.AsSpan(512, data.Length).ToArray());
        Assert.Equal((byte)1, back[0]);
        Assert.Equal((byte)((512 + data.Length) | 1), back[512 + data.Length]);
    }
}
