using System.Buffers.Binary;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>The header as QEMU writes and checks it: fields, extensions kept byte for byte, and the refusals with QEMU's words.</summary>
public sealed class Qcow2HeaderTests
{
    [Fact]
    public void CreatedHeader_IsQemusLayout()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1L << 30, BackingFile = "base.qcow2", BackingFormat = "qcow2" });
        var cluster = new byte[65536];
        file.Read(0, cluster);
        var h = Qcow2Header.Parse(cluster, "x");

        Assert.Equal(3u, h.Version);
        Assert.Equal(16, h.ClusterBits);
        Assert.Equal(1UL << 30, h.Size);
        Assert.Equal(4, h.RefcountOrder);
        Assert.Equal(112u, h.HeaderLength);
        // qemu-img create's clusters: refcount table 1, refcount block 2, L1 table 3.
        Assert.Equal(65536UL, h.RefcountTableOffset);
        Assert.Equal(1u, h.RefcountTableClusters);
        Assert.Equal(3UL * 65536, h.L1TableOffset);
        Assert.Equal(2u, h.L1Size);
        Assert.Equal("base.qcow2", h.BackingFile);
        Assert.Equal("qcow2", h.BackingFormat);
        Assert.Contains(h.FeatureNames, f => f is { Type: 0, Bit: 0, Name: "dirty bit" });
        Assert.Contains(h.FeatureNames, f => f is { Type: 2, Bit: 0, Name: "bitmaps" });
        Assert.Equal(0UL, h.IncompatibleFeatures);
    }

    [Fact]
    public void Version2Header_HasNoFeatureFields()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1 << 20, Version = 2 });
        var cluster = new byte[65536];
        file.Read(0, cluster);
        var h = Qcow2Header.Parse(cluster, "x");
        Assert.Equal(2u, h.Version);
        Assert.Equal(72u, h.HeaderLength);
        Assert.Empty(h.FeatureNames); // QEMU writes the feature table for version 3 only
        Assert.Equal(4, h.RefcountOrder);
    }

    [Fact]
    public void UnknownExtensionsAndHeaderFields_SurviveARewrite()
    {
        var h = new Qcow2Header { Version = 3, ClusterBits = 16, Size = 1 << 20, UnknownHeaderFields = [1, 2, 3, 4, 5, 6, 7, 8], BackingFile = "b" };
        h.OtherExtensions.Add(new Qcow2HeaderExtension(0x12345678, [9, 8, 7]));
        h.OtherExtensions.Add(new Qcow2HeaderExtension(Qcow2Format.ExtBitmaps, new byte[24]));
        var parsed = Qcow2Header.Parse(h.Serialize(65536), "x");
        Assert.Equal(120u, parsed.HeaderLength);
        Assert.Equal(h.UnknownHeaderFields, parsed.UnknownHeaderFields);
        Assert.Equal([0x12345678u, Qcow2Format.ExtBitmaps], parsed.OtherExtensions.Select(e => e.Type));
        Assert.Equal(new byte[] { 9, 8, 7 }, parsed.OtherExtensions[0].Data);
        Assert.Equal("b", parsed.BackingFile);
    }

    [Fact]
    public void NotQcow2_IsRefusedAsSuch()
    {
        var e = Assert.Throws<BlockException>(() => Qcow2Image.OpenOn(new MemoryQcow2File(new byte[1 << 16]), true, null, "plain.raw"));
        Assert.Equal(Qcow2Errors.NotQcow2Code, e.Code);
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
        Assert.Contains("Image is not in qcow2 format", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownIncompatibleFeature_IsRefusedByItsName()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1 << 20 });
        // Bit 2 is "external data file" in the image's own feature table; bit 40 has no name.
        SetField64(file, Qcow2Format.IncompatibleFeaturesField, (1UL << 2) | (1UL << 40));
        var e = Assert.Throws<BlockException>(() => Qcow2TestImages.Open(file, readOnly: true));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains("Unsupported qcow2 feature(s): external data file, Unknown incompatible feature: 10000000000", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(4, 22, "Unsupported qcow2 version")]
    [InlineData(20, 22, "Unsupported cluster size: 2^22")]
    [InlineData(20, 8, "Unsupported cluster size: 2^8")]
    public void UnsupportedVersionOrClusterSize_IsRefused(int field, uint value, string message)
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1 << 20 });
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, field == 4 ? 4u : value);
        file.Write(field, bytes);
        var e = Assert.Throws<BlockException>(() => Qcow2TestImages.Open(file, readOnly: true));
        Assert.Equal(Qcow2Errors.FeatureUnsupportedCode, e.Code);
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void L1TableTooSmallForTheSize_IsCorrupt()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1L << 30 });
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, 1); // 1 GiB at 64 KiB clusters needs 2 entries
        file.Write(36, bytes);
        var e = Assert.Throws<BlockException>(() => Qcow2TestImages.Open(file, readOnly: true));
        Assert.Equal(Qcow2Errors.CorruptCode, e.Code);
        Assert.Contains("L1 table is too small", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task UnknownAutoclearBits_AreClearedByAReadWriteOpenOnly()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 1 << 20 });
        SetField64(file, Qcow2Format.AutoclearFeaturesField, Qcow2Format.AutoclearBitmaps | (1UL << 7));
        await Qcow2TestImages.Open(file, readOnly: true).DisposeAsync();
        Assert.Equal(Qcow2Format.AutoclearBitmaps | (1UL << 7), GetField64(file, Qcow2Format.AutoclearFeaturesField));

        await Qcow2TestImages.Open(file).DisposeAsync();
        Assert.Equal(Qcow2Format.SupportedAutoclear, GetField64(file, Qcow2Format.AutoclearFeaturesField));
    }

    [Theory]
    [InlineData(1000, 0, "invalid-size")]
    [InlineData(1 << 20, 1000, "invalid-cluster-size")]
    [InlineData(1 << 20, 4 << 20, "invalid-cluster-size")]
    public void CreateWithBadSizes_IsRefusedBeforeTouchingAnything(long size, int clusterSize, string code)
    {
        var e = Assert.Throws<BlockException>(() => Qcow2Creator.Validate(new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize == 0 ? 65536 : clusterSize }, "x"));
        Assert.Equal(code, e.Code);
    }

    [Fact]
    public void CreateWithOptionsVersion2CannotHold_IsRefused()
    {
        Assert.Equal("invalid-create-options", Assert.Throws<BlockException>(() => Qcow2Creator.Validate(new Qcow2CreateOptions { Size = 1 << 20, Version = 2, LazyRefcounts = true }, "x")).Code);
        Assert.Equal("invalid-create-options", Assert.Throws<BlockException>(() => Qcow2Creator.Validate(new Qcow2CreateOptions { Size = 1 << 20, ExtendedL2 = true, ClusterSize = 4096 }, "x")).Code);
        Assert.Equal("invalid-create-options", Assert.Throws<BlockException>(() => Qcow2Creator.Validate(new Qcow2CreateOptions { Size = 1 << 20, BackingFormat = "raw" }, "x")).Code);
    }

    private static void SetField64(MemoryQcow2File file, int offset, ulong value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        file.Write(offset, bytes);
    }

    private static ulong GetField64(MemoryQcow2File file, int offset)
    {
        var bytes = new byte[8];
        file.Read(offset, bytes);
        return BinaryPrimitives.ReadUInt64BigEndian(bytes);
    }
}
