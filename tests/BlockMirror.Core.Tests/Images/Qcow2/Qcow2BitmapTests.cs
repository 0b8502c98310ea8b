using System.Buffers.Binary;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// The bitmaps extension: the directory and table codec against qcow2.txt's layout and QEMU's checks,
/// and the image's store / reload / remove with refcounts kept exact (the check finds neither
/// corruption nor leaks), including every state a power cut can leave in the middle of a store.
/// </summary>
public sealed class Qcow2BitmapTests
{
    private const long Size = 64L << 20;

    private static Qcow2BitmapEntry Entry(string name, uint flags = Qcow2Format.BitmapFlagAuto, int bits = 16, ulong table = 0x30000, uint tableSize = 1) =>
        new(table, tableSize, flags, bits, name, []);

    [Fact]
    public void Directory_round_trips_with_qemus_layout()
    {
        var entries = new List<Qcow2BitmapEntry> { Entry("b1"), Entry("a-longer-name", Qcow2Format.BitmapFlagInUse, 9, 0x50000, 2) };
        var bytes = Qcow2BitmapDirectory.Serialize(entries);
        // 24-byte header + name, padded to 8: 26 → 32 and 37 → 40.
        Assert.Equal(72, bytes.Length);
        Assert.Equal(0x30000UL, BinaryPrimitives.ReadUInt64BigEndian(bytes));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(8)));
        Assert.Equal(Qcow2Format.BitmapFlagAuto, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(12)));
        Assert.Equal(1, bytes[16]); // type: dirty tracking
        Assert.Equal(16, bytes[17]);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(18)));
        Assert.Equal("b1"u8.ToArray(), bytes.AsSpan(24, 2).ToArray());

        var parsed = Qcow2BitmapDirectory.Parse(bytes, 2, 65536, Size, "t");
        Assert.Equal(entries.Select(e => (e.Name, e.Flags, e.GranularityBits, e.TableOffset, e.TableSize)),
            parsed.Select(e => (e.Name, e.Flags, e.GranularityBits, e.TableOffset, e.TableSize)));
        Assert.True(parsed[1].InUse);
        Assert.False(parsed[1].Auto);
    }

    public static TheoryData<string> BadEntries => new() { "reserved-flag", "type", "granularity-8", "granularity-32", "unaligned-table", "table-too-small", "no-table", "duplicate" };

    [Theory]
    [MemberData(nameof(BadEntries))]
    public void Directory_entries_qemu_refuses_are_refused(string what)
    {
        var entries = new List<Qcow2BitmapEntry> { Entry("b1") };
        switch (what)
        {
            case "reserved-flag": entries[0] = entries[0] with { Flags = 1u << 3 }; break;
            case "granularity-8": entries[0] = entries[0] with { GranularityBits = 8 }; break;
            case "granularity-32": entries[0] = entries[0] with { GranularityBits = 32 }; break;
            case "unaligned-table": entries[0] = entries[0] with { TableOffset = 0x30200 }; break;
            case "no-table": entries[0] = entries[0] with { TableOffset = 0 }; break;
            // 64 MiB at 512-byte granules is 131072 bits: one 4 KiB cluster holds only 32768.
            case "table-too-small": entries[0] = entries[0] with { GranularityBits = 9 }; break;
            case "duplicate": entries.Add(Entry("b1")); break;
        }
        var bytes = Qcow2BitmapDirectory.Serialize(entries);
        if (what == "type")
            bytes[16] = 2;
        var e = Assert.Throws<BlockException>(() => Qcow2BitmapDirectory.Parse(bytes, (uint)entries.Count, 4096, Size, "t"));
        Assert.Equal(Qcow2Errors.CorruptCode, e.Code);
    }

    [Fact]
    public void Extension_is_checked_as_qemu_reads_it()
    {
        var good = Qcow2BitmapDirectory.SerializeExtension(new(2, 72, 0x40000));
        Assert.Equal(new Qcow2BitmapDirectory.Extension(2, 72, 0x40000), Qcow2BitmapDirectory.ParseExtension(good, 65536, "t"));
        var reserved = good.ToArray();
        reserved[7] = 1;
        Assert.Contains("Reserved field", Assert.Throws<BlockException>(() => Qcow2BitmapDirectory.ParseExtension(reserved, 65536, "t")).Message);
        var none = Qcow2BitmapDirectory.SerializeExtension(new(0, 0, 0));
        Assert.Contains("zero bitmaps", Assert.Throws<BlockException>(() => Qcow2BitmapDirectory.ParseExtension(none, 65536, "t")).Message);
        var unaligned = Qcow2BitmapDirectory.SerializeExtension(new(1, 32, 0x40200));
        Assert.Throws<BlockException>(() => Qcow2BitmapDirectory.ParseExtension(unaligned, 65536, "t"));
    }

    [Theory]
    [InlineData(0UL, true)] // all zeroes
    [InlineData(1UL, true)] // all ones
    [InlineData(0x50000UL, true)] // a data cluster
    [InlineData(0x50001UL, false)] // all-ones flag beside a data cluster
    [InlineData(0x50200UL, false)] // unaligned data cluster
    [InlineData(0x2UL, false)] // reserved bit
    [InlineData(0x0100000000000000UL, false)] // reserved high bit
    public void Table_entries_are_checked_as_qemu_checks_them(ulong entry, bool valid) =>
        Assert.Equal(valid, Qcow2BitmapDirectory.IsValidTableEntry(entry, 65536));

    [Theory]
    [InlineData(16L << 20, 16, 65536, 1u)]
    [InlineData(1L << 40, 9, 65536, 4096u)] // 2^31 granules, 2^19 per cluster
    [InlineData((1L << 30) + 1, 9, 4096, 65u)] // one granule past a whole number of clusters
    public void Table_size_covers_every_granule(long size, int bits, int clusterSize, uint expected) =>
        Assert.Equal(expected, Qcow2BitmapDirectory.TableSizeFor(size, bits, clusterSize));

    /// <summary>Bits of a bitmap over <see cref="Size"/>: the second quarter clear, so one table entry stays all-zeroes.</summary>
    private static byte[] Content(int seed, int granularityBits)
    {
        var content = new byte[HBitmap.SerializedLengthFor(Qcow2BitmapDirectory.GranulesFor(Size, granularityBits))];
        new Random(seed).NextBytes(content);
        content.AsSpan(content.Length / 4, content.Length / 4).Clear();
        return content;
    }

    [Fact]
    public async Task Stored_bitmaps_read_back_after_reopen_and_refcounts_stay_exact()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = Size, ClusterSize = 4096 });
        var fine = Content(1, 9); // 16 KiB of bits: four data clusters, one of them all zeroes
        var coarse = Content(2, 16);
        await using (var image = Qcow2TestImages.Open(file))
        {
            await image.StoreBitmapsAsync([new("fine", 512, Auto: true, InUse: false, fine), new("coarse", 65536, Auto: false, InUse: false, coarse)]);
            Assert.True((await image.CheckAsync()).IsClean);
        }
        await using (var image = Qcow2TestImages.Open(file, readOnly: true))
        {
            Assert.Equal([new Qcow2StoredBitmap("fine", 512, false, true), new Qcow2StoredBitmap("coarse", 65536, false, false)], image.BitmapsAtOpen);
            Assert.Equal(fine, image.ReadStoredBitmap("fine"));
            Assert.Equal(coarse, image.ReadStoredBitmap("coarse"));
        }
        Assert.True(Qcow2Check.Run(file).IsClean);

        // A read-write open marks them in use; storing new bits replaces the old clusters, freed.
        var next = Content(3, 9);
        await using (var image = Qcow2TestImages.Open(file))
        {
            Assert.All(image.BitmapsAtOpen, b => Assert.False(b.InUse));
            Assert.All(image.StoredBitmaps, b => Assert.True(b.InUse));
            await image.StoreBitmapsAsync([new("fine", 512, Auto: true, InUse: true, next), new("coarse", 65536, Auto: false, InUse: true, null)]);
            Assert.True((await image.CheckAsync()).IsClean);
            Assert.Equal(next, image.ReadStoredBitmap("fine"));
            Assert.Equal(coarse, image.ReadStoredBitmap("coarse")); // kept as it was
            await image.RemoveBitmapAsync("fine");
            Assert.Equal(["coarse"], image.StoredBitmaps.Select(b => b.Name));
            Assert.True((await image.CheckAsync()).IsClean);
            await image.StoreBitmapsAsync([]);
            Assert.Empty(image.StoredBitmaps);
            var check = await image.CheckAsync();
            Assert.True(check.IsClean, string.Join("\n", check.Messages));
        }
        await using (var image = Qcow2TestImages.Open(file, readOnly: true))
            Assert.Empty(image.BitmapsAtOpen);
    }

    [Fact]
    public async Task An_all_ones_table_entry_reads_as_every_granule_dirty_up_to_the_end()
    {
        // 64 MiB + 512 bytes at 64 KiB granules: 1025 granules, the last word holds one.
        var size = Size + 512;
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = size, ClusterSize = 65536 });
        await using (var image = Qcow2TestImages.Open(file))
            await image.StoreBitmapsAsync([new("b", 65536, Auto: true, InUse: false, null)]);
        // Point the table's only entry at "all ones", as another writer may store it.
        var ext = FindBitmapsExtension(file);
        var directory = new byte[ext.DirectorySize];
        file.Read((long)ext.DirectoryOffset, directory);
        var tableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(directory);
        var one = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(one, Qcow2Format.BitmapTableAllOnes);
        file.Write(tableOffset, one);

        await using var reopened = Qcow2TestImages.Open(file, readOnly: true);
        var bitmap = new DirtyBitmap("b", reopened.Size, 65536);
        bitmap.Deserialize(reopened.ReadStoredBitmap("b"));
        Assert.Equal(1025, bitmap.DirtyGranules);
        Assert.Equal(reopened.Size, bitmap.Count);
    }

    [Fact]
    public async Task A_version_2_image_cannot_store_bitmaps()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = Size, Version = 2 });
        await using var image = Qcow2TestImages.Open(file);
        Assert.False(image.CanStoreBitmaps);
        var e = await Assert.ThrowsAsync<BlockException>(() => image.StoreBitmapsAsync([new("b", 65536, true, false, null)]).AsTask());
        Assert.Equal("bitmap-not-storable", e.Code);
        Assert.Equal(Qcow2Image.CannotStoreInV2, e.Message);
    }

    /// <summary>
    /// A store replacing stored bitmaps, cut at every fdatasync with every prefix of the writes since
    /// the last one: the image checks without corruption and holds the old bitmaps or the new ones,
    /// whole, never a mix.
    /// </summary>
    [Fact]
    public async Task Every_state_a_power_cut_leaves_during_a_store_holds_the_old_or_the_new_bitmaps()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = Size, ClusterSize = 4096 });
        var old = Content(4, 9);
        var next = Content(5, 9);
        await using (var image = Qcow2TestImages.Open(file))
            await image.StoreBitmapsAsync([new("b", 512, Auto: true, InUse: false, old)]);
        var crashes = new List<byte[]>();
        file.BeforeFlush = f =>
        {
            var writes = f.UnsyncedWrites;
            for (var keep = 0; keep <= writes; keep++)
                crashes.Add(f.CrashImage(i => i < keep));
        };
        await using (var image = Qcow2TestImages.Open(file))
        {
            await image.StoreBitmapsAsync([new("b", 512, Auto: true, InUse: false, next), new("new", 65536, Auto: true, InUse: false, null)]);
            file.BeforeFlush = null;
        }
        Assert.NotEmpty(crashes);
        var sawOld = false;
        var sawNew = false;
        foreach (var crash in crashes)
        {
            var copy = new MemoryQcow2File(crash);
            var check = Qcow2Check.Run(copy);
            Assert.True(check.Corruptions == 0, string.Join("\n", check.Messages));
            await using var image = Qcow2TestImages.Open(copy, readOnly: true);
            if (image.BitmapsAtOpen.Count == 0)
                continue; // the autoclear bit cleared by the in-use marking at open: no bitmap is trusted
            var bits = image.ReadStoredBitmap("b");
            if (image.BitmapsAtOpen.Any(b => b.Name == "new"))
            {
                Assert.Equal(next, bits);
                sawNew = true;
            }
            else
            {
                Assert.Equal(old, bits);
                sawOld = true;
            }
        }
        Assert.True(sawOld && sawNew);
    }

    private static Qcow2BitmapDirectory.Extension FindBitmapsExtension(MemoryQcow2File file)
    {
        var first = new byte[65536];
        file.Read(0, first);
        var header = Qcow2Header.Parse(first, "t");
        return Qcow2BitmapDirectory.ParseExtension(header.BitmapsExtension!, 65536, "t");
    }
}
