using System.Buffers.Binary;
using BlockMirror.Core.Images.Qcow2;
using Xunit.Abstractions;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// The refcount rebuild a read-write open runs on a lazy-refcount image left dirty by a crash (QEMU's
/// rebuild_refcount_structure): it puts the new structure in free clusters, so crash after crash the
/// file does not grow; it never writes where the old structure or anything else lies before the
/// header switches to the new one, so a kill at any of its writes leaves an image the next open
/// repairs; and it still covers clusters an L2 entry points to past the end of the file.
/// </summary>
public sealed class Qcow2LazyRepairTests(ITestOutputHelper output)
{
    private const int Cluster = 4096;

    [Fact]
    public async Task RepeatedCrashesAndRepairs_ReuseFreeClusters_SoTheFileDoesNotGrow()
    {
        const int Cycles = 50;
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20, ClusterSize = Cluster, LazyRefcounts = true });
        var rng = new Random(21);
        var model = new byte[16 << 20];
        var image = Qcow2TestImages.Open(file);
        await WriteAsync(image, model, 0, Qcow2TestImages.Pattern(rng, 1 << 20));
        var crashed = await CrashAsync(file, image);

        var lengths = new List<long>();
        for (var cycle = 0; cycle < Cycles; cycle++)
        {
            file = new MemoryQcow2File(crashed, yieldOnAsync: false);
            image = Qcow2TestImages.Open(file); // repairs
            lengths.Add(file.Length);
            var check = Qcow2Check.Run(new MemoryQcow2File(file.Snapshot(), yieldOnAsync: false));
            Assert.True(check.IsClean, $"cycle {cycle}: {string.Join("\n", check.Messages.Take(8))}");

            // A freed cluster and a new allocation (refcounts left behind in memory: lazy), then a crash.
            var guest = (256L + (cycle % 16)) * Cluster;
            await image.DiscardAsync(guest, Cluster);
            Array.Clear(model, (int)guest, Cluster);
            await WriteAsync(image, model, guest + Cluster, Qcow2TestImages.Pattern(rng, Cluster));
            crashed = await CrashAsync(file, image);
        }

        file = new MemoryQcow2File(crashed, yieldOnAsync: false);
        await Qcow2TestImages.Open(file).DisposeAsync();
        Assert.True(Qcow2Check.Run(file).IsClean);
        await using var reader = Qcow2TestImages.Open(file, readOnly: true);
        Assert.Equal(model, await Qcow2TestImages.ReadAllAsync(reader));
        output.WriteLine("file length after each repair (clusters): " + string.Join(", ", lengths.Select(l => l / Cluster)));
        // The old repair appended at least a block and a table at every open: 100 clusters here.
        Assert.True(lengths.Max() <= lengths[0] + (4 * Cluster), "file length after each repair: " + string.Join(", ", lengths.Select(l => l / Cluster)) + " clusters");
    }

    [Fact]
    public async Task Repair_PutsTheNewStructureInFreeClustersInsideTheFile()
    {
        var (dirty, model) = await DirtyImageWithHolesAsync();
        var file = new MemoryQcow2File(dirty.ToArray(), yieldOnAsync: false);
        var before = Header(file);
        await Qcow2TestImages.Open(file).DisposeAsync();
        var after = Header(file);

        Assert.Equal(dirty.LongLength, file.Length);
        Assert.NotEqual(before.RefcountTableOffset, after.RefcountTableOffset);
        Assert.True((long)after.RefcountTableOffset < dirty.LongLength);
        Assert.True(Qcow2Check.Run(file).IsClean, string.Join("\n", Qcow2Check.Run(file).Messages.Take(8)));
        await using var reader = Qcow2TestImages.Open(file, readOnly: true);
        Assert.Equal(model, await Qcow2TestImages.ReadAllAsync(reader));
    }

    [Fact]
    public async Task KillAtEveryWriteOfTheRepair_LeavesTheOldStructureIntact_AndTheNextOpenRepairs()
    {
        var (dirty, model) = await DirtyImageWithHolesAsync();
        var old = Header(new MemoryQcow2File(dirty.ToArray(), yieldOnAsync: false));
        var oldStructure = OldStructureClusters(dirty, old);
        var kills = 0;
        for (var writes = 0; ; writes++)
        {
            Assert.True(writes < 100, "the open never finished");
            var attempt = new MemoryQcow2File(dirty.ToArray(), yieldOnAsync: false) { WritesUntilKill = writes };
            try
            {
                await Qcow2TestImages.Open(attempt).DisposeAsync();
                break; // every write of the open done: the sweep is over
            }
            catch (IOException) when (attempt.KilledImage is not null)
            {
                kills++;
            }
            var killed = attempt.KilledImage!;
            var where = $"kill after {writes} writes";

            // Until the header names the new table, the old structure is the image's: not a byte of it changed.
            var header = Header(new MemoryQcow2File(killed.ToArray(), yieldOnAsync: false));
            if (header.RefcountTableOffset == old.RefcountTableOffset)
            {
                foreach (var cluster in oldStructure)
                    Assert.True(dirty.AsSpan((int)(cluster * Cluster), Cluster).SequenceEqual(killed.AsSpan((int)(cluster * Cluster), Cluster)), $"{where}: old refcount cluster {cluster} overwritten");
                Assert.True(header.IsDirty, $"{where}: clean without a repaired structure");
            }

            var repaired = new MemoryQcow2File(killed, yieldOnAsync: false);
            await Qcow2TestImages.Open(repaired).DisposeAsync();
            var check = Qcow2Check.Run(repaired);
            Assert.True(check.IsClean, $"{where}: {string.Join("\n", check.Messages.Take(8))}");
            await using var reader = Qcow2TestImages.Open(repaired, readOnly: true);
            var content = await Qcow2TestImages.ReadAllAsync(reader);
            Assert.True(model.AsSpan().SequenceEqual(content), $"{where}: content differs");
        }
        // Two blocks and a table, a flush, the header switch, a flush, the clean flag, a flush.
        Assert.True(kills >= 8, $"only {kills} kill points in the repair");
    }

    [Fact]
    public async Task ClustersReferencedPastTheEnd_AreCoveredByTheFile_AndReadAsZeroes()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20, ClusterSize = Cluster, LazyRefcounts = true });
        var rng = new Random(22);
        var data = Qcow2TestImages.Pattern(rng, Cluster);
        var image = Qcow2TestImages.Open(file);
        await image.WriteAsync(0, data);
        await image.FlushAsync();
        await image.WriteAsync(100 * Cluster, Qcow2TestImages.Pattern(rng, Cluster)); // the newest cluster: the file's last
        var crashed = await CrashAsync(file, image);

        // The L2 entry reached the disk, the data write that would have grown the file did not.
        var cut = new MemoryQcow2File(crashed, yieldOnAsync: false);
        Assert.Equal(cut.Length - Cluster, HostOffset(cut, 100));
        cut.SetLength(cut.Length - Cluster);
        Assert.True(Qcow2Check.Run(cut).Corruptions > 0);

        await Qcow2TestImages.Open(cut).DisposeAsync();
        Assert.True(cut.Length >= crashed.LongLength);
        Assert.True(Qcow2Check.Run(cut).IsClean, string.Join("\n", Qcow2Check.Run(cut).Messages.Take(8)));
        await using var reader = Qcow2TestImages.Open(cut, readOnly: true);
        var back = new byte[Cluster];
        await reader.ReadAsync(0, back);
        Assert.Equal(data, back);
        await reader.ReadAsync(100 * Cluster, back);
        Assert.All(back, b => Assert.Equal(0, b));
    }

    /// <summary>
    /// A dirty lazy image spanning two refcount blocks (4 KiB clusters: 8 MiB a block), with a hole of
    /// freed clusters inside the file, its refcounts as the crash left them; and its content.
    /// </summary>
    private static async Task<(byte[] Dirty, byte[] Model)> DirtyImageWithHolesAsync()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 24 << 20, ClusterSize = Cluster, LazyRefcounts = true });
        var rng = new Random(23);
        var model = new byte[24 << 20];
        var image = Qcow2TestImages.Open(file);
        await WriteAsync(image, model, 0, Qcow2TestImages.Pattern(rng, 10 << 20));
        await image.FlushAsync();
        await image.DiscardAsync(2 << 20, 1 << 20);
        Array.Clear(model, 2 << 20, 1 << 20);
        await WriteAsync(image, model, 20 << 20, Qcow2TestImages.Pattern(rng, 64 << 10));
        return (await CrashAsync(file, image), model);
    }

    private static async Task WriteAsync(Qcow2Image image, byte[] model, long offset, byte[] data)
    {
        await image.WriteAsync(offset, data);
        data.CopyTo(model, offset);
    }

    /// <summary>Flushes, then takes the bytes as a kill -9 would leave them (no close: still dirty, refcounts behind).</summary>
    private static async Task<byte[]> CrashAsync(MemoryQcow2File file, Qcow2Image image)
    {
        await image.FlushAsync();
        var bytes = file.Snapshot();
        await image.DisposeAsync();
        return bytes;
    }

    private static Qcow2Header Header(MemoryQcow2File file)
    {
        var bytes = new byte[Cluster];
        file.Read(0, bytes);
        return Qcow2Header.Parse(bytes, file.Path);
    }

    private static List<long> OldStructureClusters(byte[] image, Qcow2Header header)
    {
        var clusters = new List<long>();
        var first = (long)header.RefcountTableOffset / Cluster;
        for (var c = first; c < first + header.RefcountTableClusters; c++)
        {
            clusters.Add(c);
            for (var i = 0; i < Cluster; i += 8)
            {
                var block = (long)(BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)(c * Cluster) + i)) & Qcow2Format.RefcountTableOffsetMask);
                if (block != 0)
                    clusters.Add(block / Cluster);
            }
        }
        Assert.True(clusters.Count >= 3, "the old structure has a table and two blocks");
        return clusters;
    }

    private static long HostOffset(MemoryQcow2File file, long guestCluster)
    {
        var h = Header(file);
        var entry = new byte[8];
        file.Read((long)h.L1TableOffset + (guestCluster / (Cluster / 8) * 8), entry);
        var l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(entry) & Qcow2Format.L1OffsetMask);
        file.Read(l2 + (guestCluster % (Cluster / 8) * 8), entry);
        return Qcow2Entries.HostOffset(BinaryPrimitives.ReadUInt64BigEndian(entry));
    }
}
