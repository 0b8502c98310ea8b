using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// What a power cut (or kill -9) can leave of a qcow2 image. Just before every fdatasync the driver
/// issues, the test takes images of the file as it could be on disk then: the state at the previous
/// fdatasync plus none, all, or a random subset of the writes since (the page cache may write any of
/// them back). Every such image must check without corruption (leaks are allowed), and every byte
/// that no request touched since the last acknowledged flush must read back as it was then —
/// including the bytes a copy-on-write moved to a new cluster.
/// </summary>
public sealed class Qcow2CrashConsistencyTests
{
    public static TheoryData<string> Configurations => new()
    {
        "cs=65536 v=3",
        "cs=4096 v=2",
        "cs=512 v=3",
        "cs=4096 v=3 backing",
        "cs=65536 v=3 extl2 backing",
        "cs=4096 v=3 lazy",
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public async Task EveryStateAPowerCutCanLeave_ChecksWithoutCorruption_AndKeepsFlushedData(string configuration)
    {
        for (var seed = 1; seed <= 3; seed++)
            await RunAsync(configuration, seed, steps: 120);
    }

    /// <summary>
    /// A new L2 table placed in a reused cluster (which still holds old data) must never be reachable
    /// from the L1 table on disk before its zeroes and entries are: every subset of the writes before
    /// each flush is tried.
    /// </summary>
    [Fact]
    public async Task NewL2TableInAReusedCluster_IsNeverReachableBeforeItIsWritten()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1 << 20, ClusterSize = 512 });
        var rng = new Random(5);
        var image = Qcow2TestImages.Open(file);
        await image.WriteAsync(0, Qcow2TestImages.Pattern(rng, 64 << 10));
        await image.FlushAsync();
        await image.DiscardAsync(0, 64 << 10);
        await image.FlushAsync(); // the data clusters are free now, and hold old bytes

        var images = new List<byte[]>();
        file.BeforeFlush = f =>
        {
            var n = f.UnsyncedWrites;
            var subsets = n <= 12 ? 1 << n : 4096;
            for (var mask = 0; mask < subsets; mask++)
            {
                var bits = n <= 12 ? mask : rng.Next();
                images.Add(f.CrashImage(i => ((bits >> (i % 31)) & 1) != 0));
            }
        };
        // Far from the first writes: needs a new L2 table, which takes a freed cluster.
        await image.WriteAsync(512 << 10, Qcow2TestImages.Pattern(rng, 4096));
        await image.FlushAsync();
        await image.DisposeAsync();

        Assert.NotEmpty(images);
        foreach (var crashed in images)
        {
            var result = Qcow2Check.Run(new MemoryQcow2File(crashed, yieldOnAsync: false));
            Assert.True(result.Corruptions == 0, string.Join("\n", result.Messages.Take(8)));
        }
    }

    /// <summary>A crash image with what must hold in it.</summary>
    private sealed record CrashPoint(byte[] Image, byte[] Flushed, bool[] Touched, string Where);

    private static async Task RunAsync(string configuration, int seed, int steps)
    {
        var parts = configuration.Split(' ');
        int Get(string key) => int.Parse(parts.First(p => p.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        var clusterSize = Get("cs");
        var version = Get("v");
        var lazy = parts.Contains("lazy");
        var size = Math.Clamp(clusterSize * 32L, 128 << 10, 4 << 20);
        var rng = new Random(seed);

        byte[]? backingBytes = null;
        MemoryBlockImage? backing = null;
        if (parts.Contains("backing"))
        {
            backingBytes = Qcow2TestImages.Pattern(rng, (int)size);
            backing = new MemoryBlockImage(backingBytes);
        }
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions
        {
            Size = size,
            ClusterSize = clusterSize,
            Version = version,
            ExtendedL2 = parts.Contains("extl2"),
            LazyRefcounts = lazy,
            BackingFile = backing is null ? null : "base.raw",
        });
        var model = backingBytes?.ToArray() ?? new byte[size];
        var flushed = model.ToArray();
        var touched = new bool[size / 512];
        var log = new List<string>();
        var points = new List<CrashPoint>();
        var crashRng = new Random(seed * 7919);
        file.BeforeFlush = f =>
        {
            if (f.UnsyncedWrites == 0)
                return;
            var where = log.Count > 0 ? log[^1] : "start";
            points.Add(new CrashPoint(f.CrashImage(_ => false), flushed, (bool[])touched.Clone(), where + " (none)"));
            points.Add(new CrashPoint(f.CrashImage(_ => true), flushed, (bool[])touched.Clone(), where + " (all)"));
            var seedForSubset = crashRng.Next();
            var subset = new Random(seedForSubset);
            points.Add(new CrashPoint(f.CrashImage(_ => subset.Next(2) == 0), flushed, (bool[])touched.Clone(), $"{where} (subset {seedForSubset})"));
        };

        var image = Qcow2TestImages.Open(file, backing: backing);
        try
        {
            for (var step = 0; step < steps; step++)
            {
                var op = rng.Next(100);
                var offset = rng.Next(3) == 0 ? rng.NextInt64(size / clusterSize) * clusterSize : rng.NextInt64(size);
                var length = Math.Clamp(rng.Next(3) == 0 ? rng.NextInt64(1, 3L * clusterSize) : rng.Next(1, 3) * 4096, 1, size - offset);
                if (op < 50)
                {
                    var data = Qcow2TestImages.Pattern(rng, (int)length);
                    log.Add($"write {offset} +{length}");
                    Touch(touched, offset, length);
                    await image.WriteAsync(offset, data);
                    data.CopyTo(model, offset);
                }
                else if (op < 62)
                {
                    log.Add($"zero {offset} +{length}");
                    Touch(touched, offset, length);
                    await image.WriteZeroesAsync(offset, length, mayUnmap: rng.Next(2) == 0);
                    Array.Clear(model, (int)offset, (int)length);
                }
                else if (op < 72)
                {
                    log.Add($"discard {offset} +{length}");
                    Touch(touched, offset, length);
                    await image.DiscardAsync(offset, length);
                    var from = (offset + clusterSize - 1) / clusterSize * clusterSize;
                    var to = offset + length >= size ? size : (offset + length) / clusterSize * clusterSize;
                    for (var p = from; p < to; p++)
                        model[p] = version < 3 && backingBytes is not null ? backingBytes[p] : (byte)0;
                }
                else if (op < 90)
                {
                    log.Add("flush");
                    await image.FlushAsync();
                    flushed = model.ToArray();
                    Array.Clear(touched);
                }
                else
                {
                    log.Add("reopen");
                    await image.DisposeAsync();
                    flushed = model.ToArray();
                    Array.Clear(touched);
                    image = Qcow2TestImages.Open(file, backing: backing);
                }
                await VerifyAsync(points, backing, lazy, log);
            }
        }
        finally
        {
            await image.DisposeAsync();
        }
        await VerifyAsync(points, backing, lazy, log);
    }

    private static void Touch(bool[] touched, long offset, long length)
    {
        for (var s = offset / 512; s <= (offset + length - 1) / 512; s++)
            touched[s] = true;
    }

    private static async Task VerifyAsync(List<CrashPoint> points, MemoryBlockImage? backing, bool lazy, List<string> log)
    {
        foreach (var point in points)
        {
            var crashed = new MemoryQcow2File(point.Image, yieldOnAsync: false);
            if (lazy)
            {
                // Lazy refcounts trade this for speed: the image is marked dirty and repaired at open.
                await (await OpenRepairedAsync(crashed, backing)).DisposeAsync();
            }
            var result = Qcow2Check.Run(crashed);
            Assert.True(result.Corruptions == 0,
                $"crash at {point.Where}: {result.Corruptions} corruptions\n{string.Join("\n", result.Messages.Take(8))}\n{string.Join("\n", log.TakeLast(10))}");
            if (lazy)
                continue;

            await using var image = Qcow2TestImages.Open(crashed, readOnly: true, backing: backing);
            var content = await Qcow2TestImages.ReadAllAsync(image);
            for (var s = 0; s < point.Touched.Length; s++)
            {
                if (point.Touched[s])
                    continue;
                var span = content.AsSpan(s * 512, 512);
                if (!span.SequenceEqual(point.Flushed.AsSpan(s * 512, 512)))
                    Assert.Fail($"crash at {point.Where}: sector {s} (untouched since the last flush) changed\n{string.Join("\n", log.TakeLast(10))}");
            }
        }
        points.Clear();
    }

    private static Task<Qcow2Image> OpenRepairedAsync(MemoryQcow2File file, MemoryBlockImage? backing) =>
        Task.FromResult(Qcow2TestImages.Open(file, backing: backing));
}
