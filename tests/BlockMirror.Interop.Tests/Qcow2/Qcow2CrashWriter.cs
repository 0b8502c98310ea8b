using System.Globalization;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// The child process of <see cref="Qcow2KillTests"/> (run as <c>dotnet BlockMirror.Interop.Tests.dll
/// qcow2-crash-writer ...</c>): opens a qcow2 image read-write through the driver and, until it is
/// killed, issues batches of concurrent writes, zero writes and discards on disjoint blocks, flushing
/// after most batches. It prints each operation before issuing it and <c>FLUSHED id</c> once a flush
/// returned, so the parent knows what was acknowledged and what may have been in flight.
/// </summary>
internal static class Qcow2CrashWriter
{
    public const string Command = "qcow2-crash-writer";

    /// <summary>args: image, seed, first operation id, block size, cluster size.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        var path = args[0];
        var rng = new Random(int.Parse(args[1], CultureInfo.InvariantCulture));
        var nextId = long.Parse(args[2], CultureInfo.InvariantCulture);
        var blockSize = int.Parse(args[3], CultureInfo.InvariantCulture);
        var clusterSize = int.Parse(args[4], CultureInfo.InvariantCulture);
        var output = Console.Out;

        await using var image = Qcow2Image.Open(path, readOnly: false);
        var blocks = (int)(image.Size / blockSize);
        var blocksPerCluster = Math.Max(1, clusterSize / blockSize);
        output.WriteLine("READY");
        output.Flush();
        while (true)
        {
            var taken = new List<(int First, int Count)>();
            var batch = new List<Func<Task>>();
            for (var i = rng.Next(1, 9); i > 0; i--)
            {
                var kind = rng.Next(10) switch { < 7 => 'W', < 9 => 'Z', _ => 'D' };
                int first;
                int count;
                if (kind == 'D')
                {
                    // Discards only change whole clusters: give them whole clusters, so the result is known.
                    count = blocksPerCluster * rng.Next(1, 4);
                    first = rng.Next((blocks - count) / blocksPerCluster) * blocksPerCluster;
                }
                else
                {
                    count = rng.Next(1, 33);
                    first = rng.Next(2) == 0 ? rng.Next(blocks - count) : rng.Next((blocks - count) / blocksPerCluster) * blocksPerCluster;
                }
                if (taken.Any(t => first < t.First + t.Count && t.First < first + count))
                    continue;
                taken.Add((first, count));
                var id = nextId++;
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"OP {id} {kind} {first} {count}"));
                var offset = (long)first * blockSize;
                var length = count * blockSize;
                var unmap = rng.Next(2) == 0;
                batch.Add(kind switch
                {
                    'W' => () => image.WriteAsync(offset, TaggedBlocks.Content(id, first, count, blockSize)).AsTask(),
                    'Z' => () => image.WriteZeroesAsync(offset, length, unmap).AsTask(),
                    _ => () => image.DiscardAsync(offset, length).AsTask(),
                });
            }
            output.Flush();
            await Task.WhenAll(batch.Select(b => Task.Run(b)));
            if (rng.Next(10) < 6)
            {
                await image.FlushAsync();
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"FLUSHED {nextId - 1}"));
                output.Flush();
            }
        }
    }
}
