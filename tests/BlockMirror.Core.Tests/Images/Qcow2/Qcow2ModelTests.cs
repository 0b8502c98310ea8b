using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;
using Xunit.Abstractions;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// Seeded model-based test of the qcow2 driver: random writes, overwrites, zero writes (with and
/// without unmap), discards, reads, flushes and close/reopen against a byte array, for several
/// cluster sizes, versions 2 and 3, extended L2 entries, refcount widths, lazy refcounts and a
/// backing image. After every reopen the image must check clean (no corruption, no leak), and block
/// status must never call data zero.
/// </summary>
public sealed class Qcow2ModelTests(ITestOutputHelper output)
{
    public static TheoryData<string> Configurations => new()
    {
        "cs=65536 v=3",
        "cs=65536 v=2",
        "cs=4096 v=3",
        "cs=4096 v=2",
        "cs=512 v=3",
        "cs=512 v=2",
        "cs=2097152 v=3",
        "cs=65536 v=3 backing",
        "cs=4096 v=2 backing",
        "cs=65536 v=3 extl2",
        "cs=16384 v=3 extl2 backing",
        "cs=4096 v=3 lazy",
        "cs=4096 v=3 refbits=1",
        "cs=512 v=3 refbits=64",
        "cs=65536 v=3 prealloc",
        "cs=32768 v=3 extl2 prealloc backing",
        "cs=65536 v=3 odd",
        "cs=4096 v=2 odd backing",
        "cs=16384 v=3 extl2 odd",
        "cs=512 v=3 odd lazy",
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public async Task RandomOperations_MatchTheModel_AndTheImageChecksClean(string configuration)
    {
        foreach (var seed in new[] { 1, 2, 3 })
            await RunAsync(configuration, seed, steps: 250);
    }

    private async Task RunAsync(string configuration, int seed, int steps)
    {
        var parts = configuration.Split(' ');
        int Get(string key, int fallback) =>
            parts.FirstOrDefault(p => p.StartsWith(key + "=", StringComparison.Ordinal)) is { } p ? int.Parse(p[(key.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture) : fallback;
        var clusterSize = Get("cs", 65536);
        var version = Get("v", 3);
        var hasBacking = parts.Contains("backing");
        var size = Math.Clamp(clusterSize * 40L, 256 << 10, 24 << 20);
        size -= size % 512;
        if (parts.Contains("odd"))
            size += 3 * 512; // the last cluster is partial: discards and zeroes at the end treat it as whole

        var rng = new Random(seed);
        byte[]? backingBytes = null;
        MemoryBlockImage? backing = null;
        if (hasBacking)
        {
            // Larger than half the image, smaller than all of it: reads past its end must be zeroes.
            backingBytes = new byte[size * 3 / 4];
            for (var pos = 0; pos < backingBytes.Length; pos += 4096)
            {
                if (rng.Next(3) != 0)
                    Qcow2TestImages.Pattern(rng, Math.Min(4096, backingBytes.Length - pos)).CopyTo(backingBytes, pos);
            }
            backing = new MemoryBlockImage(backingBytes);
        }
        var options = new Qcow2CreateOptions
        {
            Size = size,
            ClusterSize = clusterSize,
            Version = version,
            ExtendedL2 = parts.Contains("extl2"),
            LazyRefcounts = parts.Contains("lazy"),
            RefcountBits = Get("refbits", 16),
            Preallocation = parts.Contains("prealloc") ? Qcow2Preallocation.Metadata : Qcow2Preallocation.Off,
            BackingFile = hasBacking ? "backing.raw" : null,
            BackingFormat = hasBacking ? "raw" : null,
        };
        var file = Qcow2TestImages.Create(options);
        var model = new byte[size];
        if (backingBytes is not null)
            backingBytes.CopyTo(model, 0);

        var image = Qcow2TestImages.Open(file, backing: backing);
        var log = new List<string>();
        try
        {
            for (var step = 0; step < steps; step++)
            {
                var op = rng.Next(100);
                if (op < 28)
                {
                    var (offset, length) = RandomRange(rng, size, clusterSize);
                    var data = Qcow2TestImages.Pattern(rng, (int)length);
                    log.Add($"write {offset} +{length}");
                    await image.WriteAsync(offset, data, fua: rng.Next(20) == 0);
                    data.CopyTo(model, offset);
                }
                else if (op < 36)
                {
                    var cluster = rng.NextInt64(size / clusterSize);
                    var count = (int)Math.Min(rng.Next(1, 5), (size / clusterSize) - cluster);
                    var data = Qcow2TestImages.Pattern(rng, count * clusterSize);
                    log.Add($"write clusters {cluster} x{count}");
                    await image.WriteAsync(cluster * clusterSize, data);
                    data.CopyTo(model, cluster * clusterSize);
                }
                else if (op < 48)
                {
                    var (offset, length) = RandomRange(rng, size, clusterSize);
                    var unmap = rng.Next(2) == 0;
                    log.Add($"zero {offset} +{length} unmap={unmap}");
                    await image.WriteZeroesAsync(offset, length, unmap);
                    Array.Clear(model, (int)offset, (int)length);
                }
                else if (op < 56)
                {
                    var (offset, length) = RandomRange(rng, size, clusterSize);
                    log.Add($"discard {offset} +{length}");
                    await image.DiscardAsync(offset, length);
                    ApplyDiscard(model, backingBytes, offset, length, clusterSize, version);
                }
                else if (op < 78)
                {
                    var (offset, length) = RandomRange(rng, size, clusterSize);
                    var buffer = new byte[length];
                    Array.Fill(buffer, (byte)0xCC);
                    await image.ReadAsync(offset, buffer);
                    AssertSame(model, offset, buffer, log);
                }
                else if (op < 83)
                {
                    log.Add("flush");
                    await image.FlushAsync();
                }
                else if (op < 89)
                {
                    log.Add("reopen");
                    await image.DisposeAsync();
                    AssertClean(file, log);
                    image = Qcow2TestImages.Open(file, backing: backing);
                }
                else if (op < 93)
                {
                    var result = await image.CheckAsync();
                    Assert.True(result.IsClean, $"check mid-run: {string.Join("\n", result.Messages.Take(10))}\n{Tail(log)}");
                }
                else
                {
                    await AssertStatusAgreesAsync(image, model, rng, size, log);
                }
            }
            var all = await Qcow2TestImages.ReadAllAsync(image);
            AssertSame(model, 0, all, log);
        }
        finally
        {
            await image.DisposeAsync();
        }
        AssertClean(file, log);
        await using var reopened = Qcow2TestImages.Open(file, readOnly: true, backing: backing);
        AssertSame(model, 0, await Qcow2TestImages.ReadAllAsync(reopened), log);
        output.WriteLine($"{configuration} seed {seed}: {steps} steps, file {file.Length} bytes");
    }

    /// <summary>What QEMU's discard does: whole clusters (and the image's partial last one) read as zeroes, except version 2 over a backing file, where they read the backing again.</summary>
    private static void ApplyDiscard(byte[] model, byte[]? backing, long offset, long length, int clusterSize, int version)
    {
        var from = (offset + clusterSize - 1) / clusterSize * clusterSize;
        var end = offset + length;
        var to = end >= model.Length ? model.Length : end / clusterSize * clusterSize;
        for (var pos = from; pos < to; pos++)
            model[pos] = version < 3 && backing is not null && pos < backing.Length ? backing[pos] : (byte)0;
    }

    private static (long Offset, long Length) RandomRange(Random rng, long size, int clusterSize)
    {
        long offset = rng.Next(4) switch
        {
            0 => rng.NextInt64(size / clusterSize) * clusterSize,
            1 => rng.NextInt64(size / 512) * 512,
            _ => rng.NextInt64(size),
        };
        long length = rng.Next(6) switch
        {
            0 => rng.Next(1, 16),
            1 => clusterSize,
            2 => rng.NextInt64(1, 4L * clusterSize),
            3 => rng.Next(1, 9) * 4096,
            _ => rng.NextInt64(1, Math.Min(size, 1L << 20)),
        };
        return (offset, Math.Clamp(length, 1, size - offset));
    }

    private static async Task AssertStatusAgreesAsync(Qcow2Image image, byte[] model, Random rng, long size, List<string> log)
    {
        var start = rng.NextInt64(size);
        var end = Math.Min(size, start + rng.NextInt64(1, 4L << 20));
        await foreach (var e in ImageExtents.EnumerateAsync(image, start, end - start))
        {
            if (e.Kind == ExtentKind.Zero && model.AsSpan((int)e.Offset, (int)e.Length).ContainsAnyExcept((byte)0))
                Assert.Fail($"block status says [{e.Offset}, +{e.Length}) is zero, but it holds data\n{Tail(log)}");
        }
        for (var pos = start; pos < end;)
        {
            var layer = await image.GetLayerStatusAsync(pos, end - pos);
            Assert.True(layer.Length > 0);
            if (layer.Kind == Qcow2LayerKind.Zero && model.AsSpan((int)pos, (int)layer.Length).ContainsAnyExcept((byte)0))
                Assert.Fail($"layer status says [{pos}, +{layer.Length}) is zero, but it holds data\n{Tail(log)}");
            pos += layer.Length;
        }
    }

    private static void AssertClean(MemoryQcow2File file, List<string> log)
    {
        var result = Qcow2Check.Run(file);
        Assert.True(result.IsClean, $"check after close: {result.Corruptions} corruptions, {result.Leaks} leaks\n{string.Join("\n", result.Messages.Take(10))}\n{Tail(log)}");
    }

    private static void AssertSame(byte[] model, long offset, byte[] actual, List<string> log)
    {
        var expected = model.AsSpan((int)offset, actual.Length);
        var mismatch = expected.CommonPrefixLength(actual);
        if (mismatch < actual.Length)
            Assert.Fail($"read at {offset} +{actual.Length}: byte {offset + mismatch} is {actual[mismatch]:x2}, expected {expected[mismatch]:x2}\n{Tail(log)}");
    }

    private static string Tail(List<string> log) => "last operations:\n" + string.Join("\n", log.TakeLast(12));
}
