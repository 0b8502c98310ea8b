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
        var workload = new KillWorkload(rng, nextId, blocks, blocksPerCluster);
        while (true)
        {
            var batch = workload.NextBatch();
            foreach (var (op, _) in batch)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"OP {op.Id} {op.Kind} {op.First} {op.Count}"));
            output.Flush();
            await Task.WhenAll(batch.Select(b => Task.Run(() => KillWorkload.RunAsync(image, b.Op, b.Unmap, blockSize))));
            if (workload.FlushAfterBatch())
            {
                await image.FlushAsync();
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"FLUSHED {workload.LastId}"));
                output.Flush();
            }
        }
    }
}
