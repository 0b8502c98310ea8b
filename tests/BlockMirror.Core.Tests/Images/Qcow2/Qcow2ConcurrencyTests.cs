using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// Many requests in flight at once, as the NBD server and a mirror issue them: sixteen workers each
/// own every sixteenth 4 KiB block, so all of them allocate, overwrite and zero inside the same
/// clusters at the same time; one more owns whole clusters at the end and writes, discards and zeroes
/// them; block status runs alongside. Each worker checks its own reads as it goes; at the end the
/// image equals the model and checks clean.
/// </summary>
public sealed class Qcow2ConcurrencyTests : IDisposable
{
    private const int Block = 4096;
    private const int Workers = 16;
    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData(65536, false, false, false)]
    [InlineData(4096, false, false, false)]
    [InlineData(65536, false, true, false)]
    [InlineData(16384, true, true, false)]
    [InlineData(65536, false, false, true)]
    public async Task ConcurrentRequestsOnSharedClusters_MatchTheModel(int clusterSize, bool extendedL2, bool backed, bool realFile)
    {
        const long size = 8 << 20;
        var rng = new Random(clusterSize + (extendedL2 ? 1 : 0) + (backed ? 2 : 0));
        var backingBytes = backed ? Qcow2TestImages.Pattern(rng, (int)size) : null;
        var backing = backingBytes is null ? null : new MemoryBlockImage(backingBytes);
        var options = new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize, ExtendedL2 = extendedL2, BackingFile = backed ? "base.raw" : null };

        MemoryQcow2File? memory = null;
        Qcow2Image image;
        var path = _dir.PathOf("c.qcow2");
        if (realFile)
        {
            image = Qcow2Image.Create(path, options, backing);
        }
        else
        {
            memory = Qcow2TestImages.Create(options);
            image = Qcow2TestImages.Open(memory, backing: backing);
        }

        var model = backingBytes?.ToArray() ?? new byte[size];
        var sharedEnd = size - (1 << 20);
        var sharedBlocks = (int)(sharedEnd / Block);
        using var stop = new CancellationTokenSource();
        try
        {
            var workers = Enumerable.Range(0, Workers).Select(w => Task.Run(async () =>
            {
                var r = new Random(w * 31 + 7);
                for (var i = 0; i < 150; i++)
                {
                    var block = (r.Next(sharedBlocks / Workers) * Workers) + w;
                    var offset = (long)block * Block;
                    switch (r.Next(10))
                    {
                        case < 5:
                            var data = Qcow2TestImages.Pattern(r, Block);
                            await image.WriteAsync(offset, data);
                            data.CopyTo(model, offset);
                            break;
                        case < 7:
                            await image.WriteZeroesAsync(offset, Block, mayUnmap: r.Next(2) == 0);
                            Array.Clear(model, (int)offset, Block);
                            break;
                        case < 9:
                            var back = new byte[Block];
                            await image.ReadAsync(offset, back);
                            Assert.True(back.AsSpan().SequenceEqual(model.AsSpan((int)offset, Block)), $"worker {w}: block {block} differs");
                            break;
                        default:
                            await image.FlushAsync();
                            break;
                    }
                }
            })).ToList();

            workers.Add(Task.Run(async () =>
            {
                var r = new Random(99);
                var clusters = (int)((size - sharedEnd) / clusterSize);
                for (var i = 0; i < 100; i++)
                {
                    var offset = sharedEnd + ((long)r.Next(clusters) * clusterSize);
                    switch (r.Next(4))
                    {
                        case 0:
                            var data = Qcow2TestImages.Pattern(r, clusterSize);
                            await image.WriteAsync(offset, data);
                            data.CopyTo(model, offset);
                            break;
                        case 1:
                            await image.DiscardAsync(offset, clusterSize);
                            Array.Clear(model, (int)offset, clusterSize);
                            break;
                        case 2:
                            await image.WriteZeroesAsync(offset, clusterSize, mayUnmap: true);
                            Array.Clear(model, (int)offset, clusterSize);
                            break;
                        default:
                            var back = new byte[clusterSize];
                            await image.ReadAsync(offset, back);
                            Assert.True(back.AsSpan().SequenceEqual(model.AsSpan((int)offset, clusterSize)), $"cluster at {offset} differs");
                            break;
                    }
                }
            }));

            var status = Task.Run(async () =>
            {
                var r = new Random(5);
                while (!stop.IsCancellationRequested)
                {
                    var start = r.NextInt64(size);
                    await foreach (var _ in ImageExtents.EnumerateAsync(image, start, Math.Min(size - start, 1 << 20)))
                    {
                    }
                }
            });

            await Task.WhenAll(workers);
            await stop.CancelAsync();
            await status;

            var all = await Qcow2TestImages.ReadAllAsync(image);
            Assert.True(all.AsSpan().SequenceEqual(model), "the image differs from the model");
            var check = await image.CheckAsync();
            Assert.True(check.IsClean, string.Join("\n", check.Messages.Take(10)));
        }
        finally
        {
            await image.DisposeAsync();
        }

        if (memory is not null)
            Assert.True(Qcow2Check.Run(memory).IsClean);
        await using var reopened = realFile ? Qcow2Image.Open(path, readOnly: true, backing) : Qcow2TestImages.Open(memory!, readOnly: true, backing: backing);
        Assert.True((await Qcow2TestImages.ReadAllAsync(reopened)).AsSpan().SequenceEqual(model));
    }
}
