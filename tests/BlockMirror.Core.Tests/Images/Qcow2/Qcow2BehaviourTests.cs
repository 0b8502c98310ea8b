using System.Buffers.Binary;
using System.IO.Compression;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>Single behaviours of the driver, each as QEMU has it.</summary>
public sealed class Qcow2BehaviourTests : IDisposable
{
    private const int Cluster = 65536;
    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task ZeroWrites_NeverAllocateDataClusters()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 64 << 20 });
        var rng = new Random(1);
        await using var image = Qcow2TestImages.Open(file);
        await image.WriteAsync(0, Qcow2TestImages.Pattern(rng, Cluster)); // an L2 table and one data cluster
        await image.FlushAsync();
        var length = file.Length;

        // Whole clusters, partial ones over nothing, with and without unmap, and a huge range.
        await image.WriteZeroesAsync(4 * Cluster, 10 * Cluster, mayUnmap: false);
        await image.WriteZeroesAsync((20 * Cluster) + 100, 3000, mayUnmap: true);
        await image.WriteZeroesAsync(Cluster, (64 << 20) - Cluster, mayUnmap: false);
        await image.FlushAsync();
        Assert.Equal(length, file.Length);

        var status = await image.GetLayerStatusAsync(4 * Cluster, 10 * Cluster);
        Assert.Equal(new Qcow2LayerExtent(4 * Cluster, 10 * Cluster, Qcow2LayerKind.Zero), status);
        Assert.True((await image.CheckAsync()).IsClean);
    }

    [Fact]
    public async Task ZeroingAllocatedData_UnmapFreesTheCluster_WithoutKeepsItForTheNextWrite()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20 });
        var rng = new Random(2);
        await using var image = Qcow2TestImages.Open(file);
        await image.WriteAsync(0, Qcow2TestImages.Pattern(rng, 4 * Cluster));
        await image.FlushAsync();
        var length = file.Length;

        // Without unmap the host cluster stays (a preallocated zero cluster); writing it again reuses it.
        await image.WriteZeroesAsync(0, Cluster, mayUnmap: false);
        var zeroes = new byte[Cluster];
        await image.ReadAsync(0, zeroes);
        Assert.All(zeroes, b => Assert.Equal(0, b));
        var data = Qcow2TestImages.Pattern(rng, 4096);
        await image.WriteAsync(8192, data);
        await image.FlushAsync();
        Assert.Equal(length, file.Length);
        var back = new byte[Cluster];
        await image.ReadAsync(0, back);
        Assert.True(back.AsSpan(8192, 4096).SequenceEqual(data));
        Assert.False(back.AsSpan(0, 8192).ContainsAnyExcept((byte)0));
        Assert.False(back.AsSpan(12288).ContainsAnyExcept((byte)0));

        // With unmap the host cluster is freed: the next allocation takes it instead of growing the file.
        await image.WriteZeroesAsync(Cluster, Cluster, mayUnmap: true);
        await image.FlushAsync();
        await image.WriteAsync(10 * Cluster, Qcow2TestImages.Pattern(rng, Cluster));
        await image.FlushAsync();
        Assert.Equal(length, file.Length);
        Assert.True((await image.CheckAsync()).IsClean);
    }

    [Fact]
    public async Task PartialZeroWrite_IntoDataWritesZeroBytes_IntoNothingMarksTheClusterZero()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20 });
        var rng = new Random(3);
        await using var image = Qcow2TestImages.Open(file);
        var data = Qcow2TestImages.Pattern(rng, Cluster);
        await image.WriteAsync(0, data);
        await image.WriteZeroesAsync(100, 200, mayUnmap: true);
        Array.Clear(data, 100, 200);
        var back = new byte[Cluster];
        await image.ReadAsync(0, back);
        Assert.Equal(data, back);
        Assert.Equal(Qcow2LayerKind.Data, (await image.GetLayerStatusAsync(0, Cluster)).Kind);

        await image.WriteZeroesAsync((5 * Cluster) + 100, 200, mayUnmap: true);
        Assert.Equal(new Qcow2LayerExtent(5 * Cluster, Cluster, Qcow2LayerKind.Zero), await image.GetLayerStatusAsync(5 * Cluster, Cluster));
    }

    [Fact]
    public async Task Discard_DropsWholeClustersOnly()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20 });
        var rng = new Random(4);
        await using var image = Qcow2TestImages.Open(file);
        var data = Qcow2TestImages.Pattern(rng, 4 * Cluster);
        await image.WriteAsync(0, data);
        await image.DiscardAsync(100, (3 * Cluster) - 200); // covers cluster 1 only
        Array.Clear(data, Cluster, Cluster);
        var back = new byte[4 * Cluster];
        await image.ReadAsync(0, back);
        Assert.Equal(data, back);
        await image.FlushAsync();
        Assert.True((await image.CheckAsync()).IsClean);
    }

    [Fact]
    public async Task Version2DiscardOverABackingImage_ShowsTheBackingAgain()
    {
        var rng = new Random(5);
        var backingBytes = Qcow2TestImages.Pattern(rng, 4 << 20);
        var backing = new MemoryBlockImage(backingBytes);
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 4 << 20, Version = 2, BackingFile = "b" });
        await using var image = Qcow2TestImages.Open(file, backing: backing);
        await image.WriteAsync(0, new byte[2 * Cluster]);
        await image.DiscardAsync(0, Cluster);
        var back = new byte[2 * Cluster];
        await image.ReadAsync(0, back);
        Assert.True(back.AsSpan(0, Cluster).SequenceEqual(backingBytes.AsSpan(0, Cluster)));
        Assert.False(back.AsSpan(Cluster).ContainsAnyExcept((byte)0));

        // Zeroes cannot be a flag in version 2: over a backing image they are written as data.
        await image.WriteZeroesAsync(2 * Cluster, Cluster, mayUnmap: true);
        Assert.Equal(Qcow2LayerKind.Data, (await image.GetLayerStatusAsync(2 * Cluster, Cluster)).Kind);
        await image.ReadAsync(2 * Cluster, back.AsMemory(0, Cluster));
        Assert.False(back.AsSpan(0, Cluster).ContainsAnyExcept((byte)0));
    }

    [Fact]
    public async Task BlockStatus_TellsThisLayerFromTheBacking()
    {
        var rng = new Random(6);
        var backingBytes = new byte[8 << 20];
        Qcow2TestImages.Pattern(rng, 1 << 20).CopyTo(backingBytes, 2 << 20); // data in [2, 3) MiB only
        var backing = new MemoryBlockImage(backingBytes);
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20, BackingFile = "b" });
        await using var image = Qcow2TestImages.Open(file, backing: backing);
        Assert.False(image.HasZeroInit);
        await image.WriteAsync(0, Qcow2TestImages.Pattern(rng, Cluster));
        await image.WriteZeroesAsync(2 << 20, Cluster, mayUnmap: true);

        Assert.Equal(new Qcow2LayerExtent(0, Cluster, Qcow2LayerKind.Data), await image.GetLayerStatusAsync(0, 16 << 20));
        Assert.Equal(new Qcow2LayerExtent(Cluster, (2 << 20) - Cluster, Qcow2LayerKind.Unallocated), await image.GetLayerStatusAsync(Cluster, 16 << 20));
        Assert.Equal(new Qcow2LayerExtent(2 << 20, Cluster, Qcow2LayerKind.Zero), await image.GetLayerStatusAsync(2 << 20, 16 << 20));

        // Through the chain: below the unallocated range the backing says zero, then data; past its end, zeroes.
        Assert.Equal(new ImageExtent(Cluster, (2 << 20) - Cluster, ExtentKind.Zero), await image.GetBlockStatusAsync(Cluster, 16 << 20));
        Assert.Equal(ExtentKind.Data, (await image.GetBlockStatusAsync((2 << 20) + Cluster, Cluster)).Kind);
        Assert.Equal(ExtentKind.Zero, (await image.GetBlockStatusAsync(12 << 20, Cluster)).Kind);

        // A partial write copies the rest of the cluster from the backing image.
        await image.WriteAsync((2 << 20) + Cluster + 1000, new byte[] { 1, 2, 3 });
        var back = new byte[Cluster];
        await image.ReadAsync((2 << 20) + Cluster, back);
        var expected = backingBytes.AsSpan((2 << 20) + Cluster, Cluster).ToArray();
        expected[1000] = 1;
        expected[1001] = 2;
        expected[1002] = 3;
        Assert.Equal(expected, back);
    }

    [Fact]
    public async Task LazyRefcounts_MarkDirtyUntilClose_AndACrashedImageIsRepairedAtOpen()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20, LazyRefcounts = true, ClusterSize = 4096 });
        var rng = new Random(7);
        var data = Qcow2TestImages.Pattern(rng, 1 << 20);
        var image = Qcow2TestImages.Open(file);
        Assert.True(image.LazyRefcounts);
        Assert.False(IsDirty(file));
        await image.WriteAsync(0, data);
        Assert.True(IsDirty(file));
        await image.FlushAsync();

        // "Crash": the bytes as they are now, without the close that would write the rest and mark it clean.
        var crashed = new MemoryQcow2File(file.Snapshot(), yieldOnAsync: false);
        await image.DisposeAsync();
        Assert.False(IsDirty(file));
        Assert.True(Qcow2Check.Run(file).IsClean);

        Assert.True(IsDirty(crashed));
        // What lazy refcounts allow after a crash: refcounts behind the L2 tables (here: all of them lost).
        var header = new byte[4096];
        crashed.Read(0, header);
        var h = Qcow2Header.Parse(header, "x");
        var entry = new byte[8];
        crashed.Read((long)h.RefcountTableOffset, entry);
        crashed.Write((long)BinaryPrimitives.ReadUInt64BigEndian(entry), new byte[4096]);
        Assert.True(Qcow2Check.Run(crashed).Corruptions > 0);
        await (Qcow2TestImages.Open(crashed, readOnly: true)).DisposeAsync();
        Assert.True(IsDirty(crashed), "a read-only open repairs nothing");
        await using (var repaired = Qcow2TestImages.Open(crashed))
        {
            Assert.False(IsDirty(crashed));
            var back = new byte[data.Length];
            await repaired.ReadAsync(0, back);
            Assert.Equal(data, back);
        }
        Assert.True(Qcow2Check.Run(crashed).IsClean);
    }

    [Fact]
    public async Task CorruptMetadata_FailsTheRequest_AndMarksTheImageCorrupt()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 16 << 20 });
        await using (var image = Qcow2TestImages.Open(file))
            await image.WriteAsync(0, new byte[] { 1 });
        // The first L2 entry, pointing somewhere no cluster starts.
        var l2 = L2TableOffset(file, 0);
        var entry = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(entry, Qcow2Format.FlagCopied | (5UL * Cluster + 512));
        file.Write(l2, entry);

        await using (var image = Qcow2TestImages.Open(file))
        {
            var e = await Assert.ThrowsAsync<BlockException>(async () => await image.ReadAsync(0, new byte[16]));
            Assert.Equal(Qcow2Errors.CorruptCode, e.Code);
            Assert.Equal(BlockErrorKind.IoError, e.Kind);
            await Assert.ThrowsAsync<BlockException>(async () => await image.WriteAsync(8 << 20, new byte[16]));
        }
        var opened = Assert.Throws<BlockException>(() => Qcow2TestImages.Open(file));
        Assert.Contains("Image is corrupt; cannot be opened read/write", opened.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RefcountTable_GrowsWhenTheFileOutgrowsIt()
    {
        // 512-byte clusters with 16-bit refcounts: one table cluster describes 64 blocks of 256 clusters = 8 MiB.
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 32 << 20, ClusterSize = 512 });
        var rng = new Random(8);
        var data = Qcow2TestImages.Pattern(rng, 12 << 20);
        await using (var image = Qcow2TestImages.Open(file))
        {
            await image.WriteAsync(3 << 20, data);
            await image.FlushAsync();
            Assert.True((await image.CheckAsync()).IsClean);
        }
        var header = new byte[512];
        file.Read(0, header);
        var h = Qcow2Header.Parse(header, "x");
        Assert.True(h.RefcountTableClusters > 1, $"refcount table has {h.RefcountTableClusters} cluster(s)");
        Assert.NotEqual(512UL, h.RefcountTableOffset);
        await using var reopened = Qcow2TestImages.Open(file, readOnly: true);
        var back = new byte[data.Length];
        await reopened.ReadAsync(3 << 20, back);
        Assert.Equal(data, back);
        Assert.True(Qcow2Check.Run(file).IsClean);
    }

    [Fact]
    public async Task CompressedCluster_ReadsAndIsCopiedOnWrite_ThenFreed()
    {
        var rng = new Random(9);
        var content = new byte[Cluster];
        for (var i = 0; i < content.Length; i++)
            content[i] = (byte)(i / 1000 % 7 * 31);
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 4 << 20 });
        await using (var image = Qcow2TestImages.Open(file))
            await image.WriteAsync(Cluster, Qcow2TestImages.Pattern(rng, Cluster)); // cluster 1 gets a host cluster
        MakeCompressed(file, guestCluster: 1, content);

        await using (var image = Qcow2TestImages.Open(file))
        {
            Assert.True(Qcow2Check.Run(file).IsClean);
            var back = new byte[Cluster];
            await image.ReadAsync(Cluster, back);
            Assert.Equal(content, back);
            Assert.Equal(new Qcow2LayerExtent(Cluster, Cluster, Qcow2LayerKind.Data), await image.GetLayerStatusAsync(Cluster, Cluster));

            await image.WriteAsync(Cluster + 5000, new byte[] { 0xee });
            content[5000] = 0xee;
            await image.ReadAsync(Cluster, back);
            Assert.Equal(content, back);
        }
        // The compressed bytes' cluster was freed when the copy replaced it.
        Assert.True(Qcow2Check.Run(file).IsClean);
    }

    [Fact]
    public async Task FuaWrite_IsDurableOnReturn()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 4 << 20 });
        await using var image = Qcow2TestImages.Open(file);
        await image.WriteAsync(0, new byte[] { 1, 2, 3 }, fua: true);
        Assert.Equal(0, file.UnsyncedWrites);
    }

    [Fact]
    public async Task RealFile_CreateOpenLockAndProperties()
    {
        var path = _dir.PathOf("r.qcow2");
        await using (var image = Qcow2Image.Create(path, 1L << 30, backingPath: "base.raw", backingFormat: "raw"))
        {
            Assert.Equal(1L << 30, image.Size);
            Assert.Equal(65536, image.ClusterSize);
            Assert.Equal(3, image.Version);
            Assert.Equal("base.raw", image.BackingFileName);
            Assert.Equal("raw", image.BackingFormat);
            Assert.Null(image.Backing);
            Assert.True(image.HasZeroInit);
            Assert.Equal(path, image.Location);
            Assert.Equal("image-locked", Assert.Throws<BlockException>(() => Qcow2Image.Open(path, readOnly: true)).Code);
            await image.WriteAsync(123, new byte[] { 9 });
        }
        Assert.Throws<IOException>(() => Qcow2Image.Create(path, 1 << 20));
        Assert.True(File.Exists(path));
        await using (var image = Qcow2Image.Open(path, readOnly: true))
        {
            Assert.True(image.ReadOnly);
            var b = new byte[1];
            await image.ReadAsync(123, b);
            Assert.Equal(9, b[0]);
            Assert.Throws<InvalidOperationException>(() => image.WriteAsync(0, new byte[1]));
        }
        Assert.Throws<FileNotFoundException>(() => Qcow2Image.Open(_dir.PathOf("missing.qcow2"), readOnly: true));
    }

    private static bool IsDirty(MemoryQcow2File file)
    {
        var bytes = new byte[8];
        file.Read(Qcow2Format.IncompatibleFeaturesField, bytes);
        return (BinaryPrimitives.ReadUInt64BigEndian(bytes) & Qcow2Format.IncompatDirty) != 0;
    }

    private static long L2TableOffset(MemoryQcow2File file, long guestCluster)
    {
        var header = new byte[Cluster];
        file.Read(0, header);
        var h = Qcow2Header.Parse(header, "x");
        var l1 = new byte[8];
        file.Read((long)h.L1TableOffset + (guestCluster / (Cluster / 8) * 8), l1);
        return (long)(BinaryPrimitives.ReadUInt64BigEndian(l1) & Qcow2Format.L1OffsetMask) + (guestCluster % (Cluster / 8) * 8);
    }

    /// <summary>
    /// Turns a written cluster into a compressed one as qemu-img convert -c would store it: raw deflate
    /// at the start of the cluster's own host cluster (so its refcount stays right), and an L2 entry
    /// with the compressed descriptor.
    /// </summary>
    private static void MakeCompressed(MemoryQcow2File file, long guestCluster, byte[] content)
    {
        var entryOffset = L2TableOffset(file, guestCluster);
        var entryBytes = new byte[8];
        file.Read(entryOffset, entryBytes);
        var host = (long)(BinaryPrimitives.ReadUInt64BigEndian(entryBytes) & Qcow2Format.L2OffsetMask);
        using var compressed = new MemoryStream();
        using (var deflate = new DeflateStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
            deflate.Write(content);
        var bytes = compressed.ToArray();
        Assert.True(bytes.Length < Cluster);
        file.Write(host, bytes);
        var g = new Qcow2Geometry(16, false, 4);
        var sectors = (ulong)((bytes.Length + 511) / 512) - 1;
        var entry = Qcow2Format.FlagCompressed | (sectors << g.CompressedSizeShift) | (ulong)host;
        BinaryPrimitives.WriteUInt64BigEndian(entryBytes, entry);
        file.Write(entryOffset, entryBytes);
    }
}
