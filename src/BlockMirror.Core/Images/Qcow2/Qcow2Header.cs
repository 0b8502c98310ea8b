using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The header of a qcow2 image (the first cluster): the fixed fields, the header extensions in their
/// order (unknown ones kept byte for byte, so a rewrite loses nothing), and the backing file name.
/// Parsing checks what QEMU's qcow2_do_open checks, with its messages.
/// </summary>
internal sealed class Qcow2Header
{
    public uint Version { get; set; }
    public ulong BackingFileOffset { get; set; }
    public uint BackingFileSize { get; set; }
    public int ClusterBits { get; set; }
    public ulong Size { get; set; }
    public uint CryptMethod { get; set; }
    public uint L1Size { get; set; }
    public ulong L1TableOffset { get; set; }
    public ulong RefcountTableOffset { get; set; }
    public uint RefcountTableClusters { get; set; }
    public uint SnapshotCount { get; set; }
    public ulong SnapshotsOffset { get; set; }
    public ulong IncompatibleFeatures { get; set; }
    public ulong CompatibleFeatures { get; set; }
    public ulong AutoclearFeatures { get; set; }
    public int RefcountOrder { get; set; } = 4;
    public uint HeaderLength { get; set; }
    public byte CompressionType { get; set; }

    /// <summary>Header bytes past the fields known here (header_length beyond 112), preserved on rewrite.</summary>
    public byte[] UnknownHeaderFields { get; set; } = [];

    public string? BackingFile { get; set; }
    public string? BackingFormat { get; set; }

    /// <summary>The feature name table, when the image has one (for naming unknown features).</summary>
    public IReadOnlyList<Qcow2FeatureName> FeatureNames { get; set; } = [];

    /// <summary>
    /// Extensions other than backing format and feature table, in their order: the bitmaps extension,
    /// and any this driver does not know. Kept for a header rewrite.
    /// </summary>
    public List<Qcow2HeaderExtension> OtherExtensions { get; } = [];

    public bool ExtendedL2 => (IncompatibleFeatures & Qcow2Format.IncompatExtendedL2) != 0;
    public bool IsDirty => (IncompatibleFeatures & Qcow2Format.IncompatDirty) != 0;
    public bool IsCorrupt => (IncompatibleFeatures & Qcow2Format.IncompatCorrupt) != 0;
    public bool LazyRefcounts => (CompatibleFeatures & Qcow2Format.CompatLazyRefcounts) != 0;

    /// <summary>The bitmaps extension's data (nb_bitmaps, reserved, directory size, directory offset), or null.</summary>
    public byte[]? BitmapsExtension => OtherExtensions.FirstOrDefault(e => e.Type == Qcow2Format.ExtBitmaps).Data;

    /// <summary>The first bytes to read to learn the cluster size (then the whole first cluster is read).</summary>
    internal const int FixedPartLength = Qcow2Format.V3MinHeaderLength;

    /// <summary>cluster_bits from the fixed part (valid only once the magic was checked).</summary>
    internal static int PeekClusterBits(ReadOnlySpan<byte> fixedPart) => (int)BinaryPrimitives.ReadUInt32BigEndian(fixedPart[20..]);

    /// <summary>
    /// Parses and validates the header from the image's first cluster (or as much of it as the file
    /// has, zero-padded). <paramref name="path"/> only names the image in messages.
    /// </summary>
    public static Qcow2Header Parse(ReadOnlySpan<byte> cluster, string path)
    {
        if (cluster.Length < Qcow2Format.V2HeaderLength || BinaryPrimitives.ReadUInt32BigEndian(cluster) != Qcow2Format.Magic)
            throw Qcow2Errors.NotQcow2(path);

        var h = new Qcow2Header
        {
            Version = BinaryPrimitives.ReadUInt32BigEndian(cluster[4..]),
            BackingFileOffset = BinaryPrimitives.ReadUInt64BigEndian(cluster[8..]),
            BackingFileSize = BinaryPrimitives.ReadUInt32BigEndian(cluster[16..]),
            ClusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(cluster[20..]),
            Size = BinaryPrimitives.ReadUInt64BigEndian(cluster[24..]),
            CryptMethod = BinaryPrimitives.ReadUInt32BigEndian(cluster[32..]),
            L1Size = BinaryPrimitives.ReadUInt32BigEndian(cluster[36..]),
            L1TableOffset = BinaryPrimitives.ReadUInt64BigEndian(cluster[40..]),
            RefcountTableOffset = BinaryPrimitives.ReadUInt64BigEndian(cluster[48..]),
            RefcountTableClusters = BinaryPrimitives.ReadUInt32BigEndian(cluster[56..]),
            SnapshotCount = BinaryPrimitives.ReadUInt32BigEndian(cluster[60..]),
            SnapshotsOffset = BinaryPrimitives.ReadUInt64BigEndian(cluster[64..]),
        };

        if (h.Version is < 2 or > 3)
            throw Qcow2Errors.Unsupported(path, $"Unsupported qcow2 version {h.Version}");
        if (h.ClusterBits is < Qcow2Format.MinClusterBits or > Qcow2Format.MaxClusterBits)
            throw Qcow2Errors.Unsupported(path, $"Unsupported cluster size: 2^{h.ClusterBits}");
        var clusterSize = 1 << h.ClusterBits;

        if (h.Version == 2)
        {
            h.RefcountOrder = 4;
            h.HeaderLength = Qcow2Format.V2HeaderLength;
        }
        else
        {
            if (cluster.Length < Qcow2Format.V3MinHeaderLength)
                throw Qcow2Errors.CorruptAtOpen(path, "qcow2 header too short");
            h.IncompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(cluster[72..]);
            h.CompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(cluster[80..]);
            h.AutoclearFeatures = BinaryPrimitives.ReadUInt64BigEndian(cluster[88..]);
            h.RefcountOrder = (int)BinaryPrimitives.ReadUInt32BigEndian(cluster[96..]);
            h.HeaderLength = BinaryPrimitives.ReadUInt32BigEndian(cluster[100..]);
            if (h.HeaderLength < Qcow2Format.V3MinHeaderLength)
                throw Qcow2Errors.CorruptAtOpen(path, "qcow2 header too short");
        }
        if (h.HeaderLength > clusterSize || h.HeaderLength > cluster.Length)
            throw Qcow2Errors.CorruptAtOpen(path, "qcow2 header exceeds cluster size");
        if (h.HeaderLength > Qcow2Format.CompressionTypeField)
            h.CompressionType = cluster[Qcow2Format.CompressionTypeField];
        if (h.HeaderLength > Qcow2Format.V3HeaderLength)
            h.UnknownHeaderFields = cluster[Qcow2Format.V3HeaderLength..(int)h.HeaderLength].ToArray();

        if (h.BackingFileOffset > (ulong)clusterSize)
            throw Qcow2Errors.CorruptAtOpen(path, "Invalid backing file offset");
        var extensionsEnd = h.BackingFileOffset != 0 ? (int)h.BackingFileOffset : clusterSize;
        h.ParseExtensions(cluster, (int)h.HeaderLength, Math.Min(extensionsEnd, cluster.Length), path);

        if (h.BackingFileOffset != 0)
        {
            var length = h.BackingFileSize;
            if (length > Math.Min(Qcow2Format.MaxBackingFileNameLength, clusterSize - (int)h.BackingFileOffset)
                || (long)h.BackingFileOffset + length > cluster.Length)
                throw Qcow2Errors.CorruptAtOpen(path, "Backing file name too long");
            h.BackingFile = Encoding.UTF8.GetString(cluster.Slice((int)h.BackingFileOffset, (int)length));
        }
        return h;
    }

    private void ParseExtensions(ReadOnlySpan<byte> cluster, int start, int end, string path)
    {
        var offset = start;
        while (offset < end)
        {
            if (end - offset < 8)
                throw Qcow2Errors.CorruptAtOpen(path, "Header extension too large");
            var type = BinaryPrimitives.ReadUInt32BigEndian(cluster[offset..]);
            var length = BinaryPrimitives.ReadUInt32BigEndian(cluster[(offset + 4)..]);
            offset += 8;
            if (length > (uint)(end - offset))
                throw Qcow2Errors.CorruptAtOpen(path, "Header extension too large");
            var data = cluster.Slice(offset, (int)length);
            switch (type)
            {
                case Qcow2Format.ExtEnd:
                    return;
                case Qcow2Format.ExtBackingFormat:
                    if (length >= 16)
                        throw Qcow2Errors.CorruptAtOpen(path, $"ERROR: ext_backing_format: len={length} too large (>=16)");
                    BackingFormat = Encoding.UTF8.GetString(data);
                    break;
                case Qcow2Format.ExtFeatureTable:
                    FeatureNames = ParseFeatureTable(data);
                    break;
                default:
                    OtherExtensions.Add(new Qcow2HeaderExtension(type, data.ToArray()));
                    break;
            }
            offset += (int)((length + 7) & ~7u);
        }
    }

    private static Qcow2FeatureName[] ParseFeatureTable(ReadOnlySpan<byte> data)
    {
        var names = new List<Qcow2FeatureName>();
        for (var i = 0; i + 48 <= data.Length; i += 48)
        {
            var name = data.Slice(i + 2, 46);
            var nul = name.IndexOf((byte)0);
            names.Add(new Qcow2FeatureName(data[i], data[i + 1], Encoding.UTF8.GetString(nul < 0 ? name : name[..nul])));
        }
        return [.. names];
    }

    /// <summary>Names of the given incompatible bits from the image's feature table, as QEMU's report_unsupported_feature.</summary>
    public string DescribeIncompatible(ulong bits)
    {
        var parts = new List<string>();
        foreach (var f in FeatureNames)
        {
            if (f.Type == 0 && f.Bit < 64 && (bits & (1UL << f.Bit)) != 0)
            {
                parts.Add(f.Name);
                bits &= ~(1UL << f.Bit);
            }
        }
        if (bits != 0)
            parts.Add($"Unknown incompatible feature: {bits:x}");
        return string.Join(", ", parts);
    }

    /// <summary>
    /// The whole first cluster as QEMU's qcow2_update_header lays it out: header, backing format,
    /// feature table (version 3), the other extensions in their order, the end marker, then the backing
    /// file name. Sets <see cref="HeaderLength"/>, <see cref="BackingFileOffset"/> and <see cref="BackingFileSize"/>.
    /// </summary>
    public byte[] Serialize(int clusterSize)
    {
        var buffer = new byte[clusterSize];
        var span = buffer.AsSpan();
        var headerLength = Version == 2 ? Qcow2Format.V2HeaderLength : Qcow2Format.V3HeaderLength + UnknownHeaderFields.Length;
        HeaderLength = (uint)headerLength;

        var offset = headerLength;
        if (BackingFormat is { } format)
            offset = WriteExtension(span, offset, Qcow2Format.ExtBackingFormat, Encoding.UTF8.GetBytes(format));
        if (Version >= 3)
            offset = WriteExtension(span, offset, Qcow2Format.ExtFeatureTable, FeatureTableBytes());
        foreach (var ext in OtherExtensions)
            offset = WriteExtension(span, offset, ext.Type, ext.Data);
        offset = WriteExtension(span, offset, Qcow2Format.ExtEnd, []);

        if (BackingFile is { } backing)
        {
            var name = Encoding.UTF8.GetBytes(backing);
            if (offset + name.Length > clusterSize)
                throw new InvalidOperationException("The header does not fit in the first cluster");
            name.CopyTo(span[offset..]);
            BackingFileOffset = (ulong)offset;
            BackingFileSize = (uint)name.Length;
        }
        else
        {
            BackingFileOffset = 0;
            BackingFileSize = 0;
        }

        BinaryPrimitives.WriteUInt32BigEndian(span, Qcow2Format.Magic);
        BinaryPrimitives.WriteUInt32BigEndian(span[4..], Version);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], BackingFileOffset);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], BackingFileSize);
        BinaryPrimitives.WriteUInt32BigEndian(span[20..], (uint)ClusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(span[24..], Size);
        BinaryPrimitives.WriteUInt32BigEndian(span[32..], CryptMethod);
        BinaryPrimitives.WriteUInt32BigEndian(span[36..], L1Size);
        BinaryPrimitives.WriteUInt64BigEndian(span[40..], L1TableOffset);
        BinaryPrimitives.WriteUInt64BigEndian(span[48..], RefcountTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(span[56..], RefcountTableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(span[60..], SnapshotCount);
        BinaryPrimitives.WriteUInt64BigEndian(span[64..], SnapshotsOffset);
        if (Version >= 3)
        {
            BinaryPrimitives.WriteUInt64BigEndian(span[72..], IncompatibleFeatures);
            BinaryPrimitives.WriteUInt64BigEndian(span[80..], CompatibleFeatures);
            BinaryPrimitives.WriteUInt64BigEndian(span[88..], AutoclearFeatures);
            BinaryPrimitives.WriteUInt32BigEndian(span[96..], (uint)RefcountOrder);
            BinaryPrimitives.WriteUInt32BigEndian(span[100..], HeaderLength);
            span[Qcow2Format.CompressionTypeField] = CompressionType;
            UnknownHeaderFields.CopyTo(span[Qcow2Format.V3HeaderLength..]);
        }
        return buffer;
    }

    private static int WriteExtension(Span<byte> span, int offset, uint type, ReadOnlySpan<byte> data)
    {
        var padded = (data.Length + 7) & ~7;
        if (offset + 8 + padded > span.Length)
            throw new InvalidOperationException("The header extensions do not fit in the first cluster");
        BinaryPrimitives.WriteUInt32BigEndian(span[offset..], type);
        BinaryPrimitives.WriteUInt32BigEndian(span[(offset + 4)..], (uint)data.Length);
        data.CopyTo(span[(offset + 8)..]);
        return offset + 8 + padded;
    }

    private static byte[] FeatureTableBytes()
    {
        var table = Qcow2FeatureName.QemuTable;
        var bytes = new byte[table.Length * 48];
        for (var i = 0; i < table.Length; i++)
        {
            bytes[i * 48] = table[i].Type;
            bytes[(i * 48) + 1] = table[i].Bit;
            Encoding.UTF8.GetBytes(table[i].Name, bytes.AsSpan((i * 48) + 2, 46));
        }
        return bytes;
    }
}
