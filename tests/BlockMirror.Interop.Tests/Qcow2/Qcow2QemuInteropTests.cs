using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// The qcow2 driver against QEMU's own tools: images qemu-img made (cluster sizes 512 B to 2 MiB,
/// versions 2 and 3, compressed with zlib and zstd, extended L2, lazy refcounts, preallocated, over
/// backing files) read and written by the driver and then checked clean and compared equal to a raw
/// model by qemu-img; images the driver made accepted by qemu-img info/check/compare/map and qemu-io.
/// </summary>
public sealed class Qcow2QemuInteropTests : IDisposable
{
    private const long Size = 24L << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("bm-qcow2-interop-").FullName;

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private string PathOf(string name) => Path.Combine(_dir, name);

    /// <summary>
    /// Opens an image this test closed a moment ago. Other test classes start QEMU's tools in
    /// parallel: between their fork and exec the child holds a copy of every descriptor of this
    /// process, ours included, and with it the OFD lock bytes of an image just closed, so an open
    /// right after a close can find the image locked for that instant (the service starts no
    /// processes and never meets this). Retried for a bounded time on image-locked only.
    /// </summary>
    private static T OpenAfterClose<T>(Func<T> open)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            try
            {
                return open();
            }
            catch (BlockException e) when (e.Code == "image-locked" && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }

    public static TheoryData<string> QemuMadeConfigurations => new()
    {
        "create cluster_size=65536",
        "create cluster_size=4096",
        "create cluster_size=2097152",
        "create cluster_size=512",
        "create cluster_size=65536,compat=0.10",
        "create cluster_size=4096,compat=0.10",
        "convert cluster_size=2097152,compat=0.10",
        "convert cluster_size=65536 -c",
        "convert cluster_size=4096,compat=0.10 -c",
        "convert cluster_size=65536,compression_type=zstd -c",
        "convert cluster_size=65536,extended_l2=on",
        "convert cluster_size=65536,extended_l2=on -c",
        "convert cluster_size=65536,preallocation=metadata",
        "convert cluster_size=65536,lazy_refcounts=on",
        "convert cluster_size=4096,refcount_bits=1",
        "convert cluster_size=65536,refcount_bits=64",
        "convert cluster_size=65536 odd",
        "create cluster_size=16384,extended_l2=on,compat=1.1 odd",
    };

    /// <summary>qemu-img makes the image; the driver reads it whole, then writes, zeroes and discards at random (with a reopen); qemu-img check is clean and qemu-img compare equals the model.</summary>
    [QemuToolsTheory]
    [MemberData(nameof(QemuMadeConfigurations))]
    public async Task QemuMadeImage_IsReadAndWrittenByTheDriver_AndQemuAgrees(string configuration)
    {
        var parts = configuration.Split(' ');
        var options = parts[1];
        var compress = parts.Contains("-c");
        var size = parts.Contains("odd") ? Size + 1536 : Size; // a partial last cluster
        var rng = new Random(configuration.GetHashCode(StringComparison.Ordinal));
        var content = Qcow2Workload.MakeContent(rng, size);
        var raw = PathOf("model.raw");
        await File.WriteAllBytesAsync(raw, content);
        var image = PathOf("image.qcow2");
        if (parts[0] == "create")
        {
            await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", options, image, size.ToString(System.Globalization.CultureInfo.InvariantCulture));
            await QemuImg.RunAsync("convert", "-n", "-f", "raw", "-O", "qcow2", raw, image);
        }
        else
        {
            await QemuImg.RunAsync([.. new[] { "convert", "-f", "raw", "-O", "qcow2", "-o", options }, .. compress ? new[] { "-c" } : [], raw, image]);
        }
        var info = await QemuImg.InfoAsync(image);
        var version = info.GetProperty("format-specific").GetProperty("data").GetProperty("compat").GetString() == "0.10" ? 2 : 3;
        var clusterSize = info.GetProperty("cluster-size").GetInt32();

        var workload = new Qcow2Workload(content, clusterSize, version, backing: null);
        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
        {
            Assert.Equal(size, driver.Size);
            Assert.Equal(version, driver.Version);
            Assert.Equal(clusterSize, driver.ClusterSize);
            await Qcow2Workload.AssertImageEqualsAsync(driver, content);
            await workload.RunAsync(driver, rng, 150);
        }
        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
        {
            await Qcow2Workload.AssertImageEqualsAsync(driver, workload.Model);
            await workload.RunAsync(driver, rng, 150);
        }

        await File.WriteAllBytesAsync(raw, workload.Model);
        await QemuImg.AssertCleanAsync(image);
        await QemuImg.AssertSameAsRawAsync(image, raw);
    }

    public static TheoryData<string> DriverMadeConfigurations => new()
    {
        "cs=65536 v=3",
        "cs=4096 v=3",
        "cs=2097152 v=3",
        "cs=512 v=3",
        "cs=65536 v=2",
        "cs=4096 v=2",
        "cs=65536 v=3 extl2",
        "cs=65536 v=3 lazy",
        "cs=65536 v=3 prealloc",
        "cs=4096 v=3 refbits=1",
        "cs=65536 v=3 refbits=64",
    };

    /// <summary>The driver makes and writes the image; qemu-img info reads its options, check is clean, compare equals the model, map agrees on what is data; qemu-io writes into it and the driver reads that back.</summary>
    [QemuToolsTheory]
    [MemberData(nameof(DriverMadeConfigurations))]
    public async Task DriverMadeImage_IsAcceptedByQemuTools(string configuration)
    {
        var parts = configuration.Split(' ');
        int Get(string key, int fallback) =>
            parts.FirstOrDefault(p => p.StartsWith(key + "=", StringComparison.Ordinal)) is { } p ? int.Parse(p[(key.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture) : fallback;
        var options = new Qcow2CreateOptions
        {
            Size = Size,
            ClusterSize = Get("cs", 65536),
            Version = Get("v", 3),
            ExtendedL2 = parts.Contains("extl2"),
            LazyRefcounts = parts.Contains("lazy"),
            RefcountBits = Get("refbits", 16),
            Preallocation = parts.Contains("prealloc") ? Qcow2Preallocation.Metadata : Qcow2Preallocation.Off,
        };
        var rng = new Random(configuration.GetHashCode(StringComparison.Ordinal));
        var image = PathOf("made.qcow2");
        var workload = new Qcow2Workload(new byte[Size], options.ClusterSize, options.Version, backing: null);
        await using (var driver = Qcow2Image.Create(image, options))
        {
            await driver.WriteAsync(0, Qcow2Workload.MakeContent(rng, Size));
            await driver.ReadAsync(0, workload.Model);
            await workload.RunAsync(driver, rng, 250);
        }

        var info = await QemuImg.InfoAsync(image);
        Assert.Equal(Size, info.GetProperty("virtual-size").GetInt64());
        Assert.Equal(options.ClusterSize, info.GetProperty("cluster-size").GetInt32());
        var specific = info.GetProperty("format-specific").GetProperty("data");
        Assert.Equal(options.Version == 2 ? "0.10" : "1.1", specific.GetProperty("compat").GetString());
        if (options.Version == 3)
        {
            Assert.Equal(options.LazyRefcounts, specific.GetProperty("lazy-refcounts").GetBoolean());
            Assert.Equal(options.ExtendedL2, specific.GetProperty("extended-l2").GetBoolean());
            Assert.Equal(options.RefcountBits, specific.GetProperty("refcount-bits").GetInt32());
            Assert.False(specific.GetProperty("corrupt").GetBoolean());
        }

        var raw = PathOf("model.raw");
        await File.WriteAllBytesAsync(raw, workload.Model);
        await QemuImg.AssertCleanAsync(image);
        await QemuImg.AssertSameAsRawAsync(image, raw);

        // Where qemu-img map says zero, the driver must not say data-with-content; where it says data, the driver says data.
        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: true)))
        {
            foreach (var e in (await QemuImg.MapAsync(image)).EnumerateArray())
            {
                var start = e.GetProperty("start").GetInt64();
                var length = e.GetProperty("length").GetInt64();
                var qemuData = e.GetProperty("data").GetBoolean();
                var qemuZero = e.GetProperty("zero").GetBoolean();
                for (var pos = start; pos < start + length;)
                {
                    var layer = await driver.GetLayerStatusAsync(pos, start + length - pos);
                    if (qemuZero && !qemuData)
                        Assert.NotEqual(Qcow2LayerKind.Data, layer.Kind);
                    if (qemuData)
                        Assert.Equal(Qcow2LayerKind.Data, layer.Kind);
                    pos += layer.Length;
                }
            }
        }

        // QEMU writes into the driver's image; the driver reads QEMU's bytes and its own.
        await QemuImg.IoAsync("-f", "qcow2", "-c", "write -P 0xab 100000 300000", "-c", "write -z 2000000 70000", image);
        workload.Model.AsSpan(100000, 300000).Fill(0xab);
        workload.Model.AsSpan(2000000, 70000).Clear();
        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: true)))
            await Qcow2Workload.AssertImageEqualsAsync(driver, workload.Model);
        await QemuImg.IoAsync("-f", "qcow2", "-r", "-c", "read -P 0xab 100000 300000", image);
        await QemuImg.AssertCleanAsync(image);
    }

    /// <summary>
    /// A chain made by qemu-img (qcow2 over qcow2, qcow2 over raw): the driver reads through to the
    /// backing image, knows which ranges the top layer holds (as qemu-img map's depth says), writes
    /// the top; qemu-img check is clean and compare (through the chain) equals the model.
    /// </summary>
    [QemuToolsTheory]
    [InlineData("qcow2", "compat=1.1")]
    [InlineData("qcow2", "compat=0.10")]
    [InlineData("raw", "compat=1.1")]
    [InlineData("qcow2", "extended_l2=on")]
    public async Task QemuMadeBackingChain_ReadsThroughAndWritesTheTop(string baseFormat, string topOptions)
    {
        var rng = new Random(baseFormat.Length + topOptions.Length);
        var baseContent = Qcow2Workload.MakeContent(rng, Size);
        var raw = PathOf("model.raw");
        await File.WriteAllBytesAsync(raw, baseContent);
        var basePath = PathOf("base." + baseFormat);
        if (baseFormat == "raw")
            File.Copy(raw, basePath);
        else
            await QemuImg.RunAsync("convert", "-f", "raw", "-O", "qcow2", raw, basePath);
        var top = PathOf("top.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", topOptions, "-b", Path.GetFileName(basePath), "-F", baseFormat, top);
        // Some data of the top's own, and a zeroed range that hides the base.
        await QemuImg.IoAsync("-f", "qcow2", "-c", "write -P 0x77 5000000 1000000", "-c", "write -z 9000000 2000000", top);
        var model = baseContent.ToArray();
        model.AsSpan(5000000, 1000000).Fill(0x77);
        model.AsSpan(9000000, 2000000).Clear();

        await using var backing = baseFormat == "raw" ? (IBlockImage)RawFileImage.Open(basePath, readOnly: true) : Qcow2Image.Open(basePath, readOnly: true);
        var version = topOptions.Contains("0.10", StringComparison.Ordinal) ? 2 : 3;
        var workload = new Qcow2Workload(model, 65536, version, baseContent);
        var map = await QemuImg.MapAsync(top); // before the driver locks the image
        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(top, readOnly: false, backing)))
        {
            Assert.Equal(Path.GetFileName(basePath), driver.BackingFileName);
            Assert.Equal(baseFormat, driver.BackingFormat);
            await Qcow2Workload.AssertImageEqualsAsync(driver, model);

            // Layer status against qemu-img map: depth 0 is this layer, deeper is the backing.
            foreach (var e in map.EnumerateArray())
            {
                var start = e.GetProperty("start").GetInt64();
                var end = start + e.GetProperty("length").GetInt64();
                var depth = e.GetProperty("depth").GetInt32();
                var data = e.GetProperty("data").GetBoolean();
                for (var pos = start; pos < end;)
                {
                    var layer = await driver.GetLayerStatusAsync(pos, end - pos);
                    var expected = depth > 0 ? Qcow2LayerKind.Unallocated : data ? Qcow2LayerKind.Data : Qcow2LayerKind.Zero;
                    Assert.True(expected == layer.Kind, $"[{pos}, +{layer.Length}): qemu-img map says depth {depth} data {data}, the driver {layer.Kind}");
                    pos += layer.Length;
                }
            }
            await workload.RunAsync(driver, rng, 200);
        }
        await File.WriteAllBytesAsync(raw, workload.Model);
        await QemuImg.AssertCleanAsync(top);
        await QemuImg.AssertSameAsRawAsync(top, raw);
    }

    /// <summary>The driver creates a top image over a backing file; qemu-img sees the backing name and format and the same content through the chain.</summary>
    [NbdInteropFact("qemu-img", "qemu-io")]
    public async Task DriverMadeTopImage_NamesItsBackingForQemu()
    {
        var rng = new Random(11);
        var baseContent = Qcow2Workload.MakeContent(rng, Size);
        var basePath = PathOf("base.qcow2");
        var raw = PathOf("model.raw");
        await File.WriteAllBytesAsync(raw, baseContent);
        await QemuImg.RunAsync("convert", "-f", "raw", "-O", "qcow2", raw, basePath);
        var top = PathOf("top.qcow2");
        var workload = new Qcow2Workload(baseContent.ToArray(), 65536, 3, baseContent);
        await using (var backing = OpenAfterClose(() => Qcow2Image.Open(basePath, readOnly: true)))
        await using (var driver = Qcow2Image.Create(top, Size, backingPath: "base.qcow2", backingFormat: "qcow2", backing: backing))
        {
            Assert.False(driver.HasZeroInit);
            await Qcow2Workload.AssertImageEqualsAsync(driver, baseContent);
            await workload.RunAsync(driver, rng, 200);
        }
        var info = await QemuImg.InfoAsync(top);
        Assert.Equal("base.qcow2", info.GetProperty("backing-filename").GetString());
        Assert.Equal("qcow2", info.GetProperty("backing-filename-format").GetString());
        await File.WriteAllBytesAsync(raw, workload.Model);
        await QemuImg.AssertCleanAsync(top);
        await QemuImg.AssertSameAsRawAsync(top, raw);
    }

    /// <summary>QEMU died with lazy refcounts (qemu-io abort): the image is dirty and qemu-img check calls it corrupt; a read-write open repairs it as check -r all would.</summary>
    [NbdInteropFact("qemu-img", "qemu-io")]
    public async Task DirtyImageLeftByQemu_IsRepairedAtReadWriteOpen()
    {
        var image = PathOf("lazy.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "16M");
        var aborted = await InteropTools.RunAsync("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 4M 64k", "-c", "abort", image]);
        Assert.NotEqual(0, aborted.ExitCode);
        Assert.Equal(2, (await QemuImg.CheckAsync(image)).ExitCode);

        await using (var readOnly = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: true)))
        {
            // Reading needs no refcounts: a dirty image opens read-only as it is (as in QEMU).
            var back = new byte[1 << 20];
            await readOnly.ReadAsync(0, back);
            Assert.All(back, b => Assert.Equal(0x5a, b));
        }
        Assert.Equal(2, (await QemuImg.CheckAsync(image)).ExitCode);

        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
        {
            await driver.WriteAsync(8 << 20, new byte[65536].Select(_ => (byte)0x3c).ToArray());
        }
        await QemuImg.AssertCleanAsync(image);
        await QemuImg.IoAsync("-f", "qcow2", "-r", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x6b 4M 64k", "-c", "read -P 0x3c 8M 64k", image);
    }

    /// <summary>
    /// A lazy-refcount image crashed fifty times (the file copied as a kill -9 would leave it: dirty,
    /// refcounts behind) and repaired at each next read-write open: the repair puts the new refcount
    /// structure in free clusters, so the file does not grow, and qemu-img finds every repaired image
    /// clean and the last one equal to the model.
    /// </summary>
    [NbdInteropFact("qemu-img")]
    public async Task LazyImage_CrashedAndRepairedFiftyTimes_StaysCleanAndDoesNotGrow()
    {
        const int Cluster = 4096;
        var image = PathOf("cycles.qcow2");
        var crash = PathOf("cycles.crash");
        var repaired = PathOf("cycles.repaired");
        var raw = PathOf("cycles.raw");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", $"lazy_refcounts=on,cluster_size={Cluster}", image, "16M");
        var model = new byte[16 << 20];
        var rng = new Random(14);
        var lengths = new List<long>();
        for (var cycle = 0; cycle < 50; cycle++)
        {
            await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
            {
                // From the second cycle on, the open just repaired the previous cycle's crash.
                lengths.Add(new FileInfo(image).Length);
                if (cycle % 10 == 1)
                {
                    File.Copy(image, repaired, overwrite: true);
                    await QemuImg.AssertCleanAsync(repaired);
                }
                (long Offset, int Length)[] writes = cycle == 0 ? [(0, 1 << 20)] : [((256L + (cycle % 16) + 1) * Cluster, Cluster)];
                await driver.DiscardAsync((256L + (cycle % 16)) * Cluster, Cluster);
                Array.Clear(model, (256 + (cycle % 16)) * Cluster, Cluster);
                foreach (var (offset, length) in writes)
                {
                    var data = new byte[length];
                    rng.NextBytes(data);
                    await driver.WriteAsync(offset, data);
                    data.CopyTo(model, offset);
                }
                await driver.FlushAsync();
                File.Copy(image, crash, overwrite: true);
            }
            File.Move(crash, image, overwrite: true);
        }
        await using (OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
        {
        }
        await QemuImg.AssertCleanAsync(image);
        await File.WriteAllBytesAsync(raw, model);
        await QemuImg.AssertSameAsRawAsync(image, raw);
        var repairs = lengths.Skip(1).ToList();
        Assert.True(repairs.Max() <= repairs[0] + (4 * Cluster), "file length after each repair: " + string.Join(", ", repairs.Select(l => l / Cluster)) + " clusters");
    }

    [NbdInteropFact("qemu-img")]
    public async Task ImagesTheDriverCannotHonour_AreRefusedWithTheirReason()
    {
        // A raw file is not a qcow2 image.
        var raw = PathOf("plain.raw");
        await File.WriteAllBytesAsync(raw, new byte[1 << 20]);
        Assert.Equal(Qcow2Errors.NotQcow2Code, Assert.Throws<BlockException>(() => Qcow2Image.Open(raw, readOnly: true)).Code);

        // External data file.
        var external = PathOf("external.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", "data_file=" + PathOf("external.data"), external, "16M");
        var e = Assert.Throws<BlockException>(() => Qcow2Image.Open(external, readOnly: true));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains("external data file", e.Message, StringComparison.Ordinal);

        // LUKS encryption.
        var encrypted = PathOf("luks.qcow2");
        await QemuImg.RunAsync("create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", encrypted, "16M");
        e = Assert.Throws<BlockException>(() => Qcow2Image.Open(encrypted, readOnly: true));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains("luks", e.Message, StringComparison.Ordinal);

        // The corrupt bit: refused read-write as QEMU does, readable read-only.
        var corrupt = PathOf("corrupt.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", corrupt, "16M");
        await using (var f = new FileStream(corrupt, FileMode.Open))
        {
            f.Position = 79; // low byte of incompatible_features
            f.WriteByte(0x02);
        }
        e = Assert.Throws<BlockException>(() => Qcow2Image.Open(corrupt, readOnly: false));
        Assert.Equal(Qcow2Errors.CorruptCode, e.Code);
        Assert.Contains("Image is corrupt; cannot be opened read/write", e.Message, StringComparison.Ordinal);
        await (Qcow2Image.Open(corrupt, readOnly: true)).DisposeAsync();

        // Internal snapshots: read-only only; the active layer reads as it is.
        var snap = PathOf("snap.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", snap, "16M");
        await QemuImg.IoAsync("-f", "qcow2", "-c", "write -P 0x11 0 64k", snap);
        await QemuImg.RunAsync("snapshot", "-c", "s1", snap);
        await QemuImg.IoAsync("-f", "qcow2", "-c", "write -P 0x22 0 64k", snap);
        e = Assert.Throws<BlockException>(() => Qcow2Image.Open(snap, readOnly: false));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains("snapshot", e.Message, StringComparison.Ordinal);
        await using (var ro = OpenAfterClose(() => Qcow2Image.Open(snap, readOnly: true)))
        {
            Assert.Equal(1, ro.SnapshotCount);
            var back = new byte[65536];
            await ro.ReadAsync(0, back);
            Assert.All(back, b => Assert.Equal(0x22, b));
        }

        // An unknown version.
        var v4 = PathOf("v4.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", v4, "16M");
        await using (var f = new FileStream(v4, FileMode.Open))
        {
            f.Position = 7;
            f.WriteByte(4);
        }
        e = Assert.Throws<BlockException>(() => Qcow2Image.Open(v4, readOnly: true));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains("Unsupported qcow2 version 4", e.Message, StringComparison.Ordinal);
    }

    [NbdInteropFact("qemu-img")]
    public async Task AnImageOpenReadWrite_IsLockedAgainstQemu()
    {
        var image = PathOf("locked.qcow2");
        await using (var driver = Qcow2Image.Create(image, 16 << 20))
        {
            var info = await InteropTools.RunAsync("qemu-img", ["info", image]);
            Assert.NotEqual(0, info.ExitCode);
            Assert.Contains("Failed to get shared \"write\" lock", info.Stderr, StringComparison.Ordinal);
            // A second opener in this process is refused as another process would be.
            Assert.Equal("image-locked", Assert.Throws<BlockException>(() => Qcow2Image.Open(image, readOnly: true)).Code);
        }
        await QemuImg.InfoAsync(image);
    }

    /// <summary>
    /// A read-write open marks the bitmaps QEMU stored in use before anything is written (QEMU's
    /// qcow2_load_dirty_bitmaps), keeping the bitmaps autoclear bit: the image's bitmaps are
    /// maintained now. A writer that goes away without storing them leaves them in use, so QEMU treats
    /// them as inconsistent rather than trust bits that missed its writes; qemu-img check stays clean.
    /// A read-only open changes nothing.
    /// </summary>
    [NbdInteropFact("qemu-img")]
    public async Task BitmapsExtension_IsMarkedInUseByAReadWriteOpen()
    {
        var image = PathOf("bitmaps.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", image, "16M");
        await QemuImg.RunAsync("bitmap", "--add", image, "b1");
        var before = await File.ReadAllBytesAsync(image);
        await using (var reader = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: true)))
            Assert.Equal([new Qcow2StoredBitmap("b1", 65536, InUse: false, Auto: true)], reader.BitmapsAtOpen);
        Assert.Equal(before, await File.ReadAllBytesAsync(image));

        await using (var driver = OpenAfterClose(() => Qcow2Image.Open(image, readOnly: false)))
        {
            Assert.Equal([new Qcow2StoredBitmap("b1", 65536, InUse: false, Auto: true)], driver.BitmapsAtOpen);
            Assert.Equal([new Qcow2StoredBitmap("b1", 65536, InUse: true, Auto: true)], driver.StoredBitmaps);
            await driver.WriteAsync(0, new byte[65536].Select(_ => (byte)1).ToArray());
        }
        var after = await File.ReadAllBytesAsync(image);
        Assert.Equal(1, after[95] & 1); // autoclear bitmaps bit kept
        var info = await QemuImg.InfoAsync(image);
        var flags = info.GetProperty("format-specific").GetProperty("data").GetProperty("bitmaps")[0].GetProperty("flags");
        Assert.Equal(["in-use", "auto"], flags.EnumerateArray().Select(f => f.GetString()!).ToArray());
        await QemuImg.AssertCleanAsync(image);
    }
}
