using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The on-disk codec of the bitmaps extension (qcow2.txt "Bitmaps extension"; QEMU's
/// block/qcow2-bitmap.c): the 24-byte header extension, the bitmap directory and the bitmap tables,
/// with QEMU's checks (check_dir_entry, check_table_entry) and its messages. Pure: no I/O.
/// </summary>
internal static class Qcow2BitmapDirectory
{
    /// <summary>The header extension's fields: the number of bitmaps, and the directory's size and offset.</summary>
    internal readonly record struct Extension(uint Count, ulong DirectorySize, ulong DirectoryOffset);

    /// <summary>Parses the extension's data as QEMU's qcow2_read_extensions checks it.</summary>
    public static Extension ParseExtension(ReadOnlySpan<byte> data, int clusterSize, string path)
    {
        if (data.Length != Qcow2Format.BitmapsExtensionLength)
            throw Qcow2Errors.CorruptAtOpen(path, "bitmaps_ext: Invalid extension length");
        var count = BinaryPrimitives.ReadUInt32BigEndian(data);
        var reserved = BinaryPrimitives.ReadUInt32BigEndian(data[4..]);
        var size = BinaryPrimitives.ReadUInt64BigEndian(data[8..]);
        var offset = BinaryPrimitives.ReadUInt64BigEndian(data[16..]);
        if (reserved != 0)
            throw Qcow2Errors.CorruptAtOpen(path, "bitmaps_ext: Reserved field is not zero");
        if (count > Qcow2Format.MaxBitmaps)
            throw Qcow2Errors.CorruptAtOpen(path, $"bitmaps_ext: Image has {count} bitmaps, exceeding the QEMU supported maximum of {Qcow2Format.MaxBitmaps}");
        if (count == 0)
            throw Qcow2Errors.CorruptAtOpen(path, "found bitmaps extension with zero bitmaps");
        if (offset % (ulong)clusterSize != 0)
            throw Qcow2Errors.CorruptAtOpen(path, "bitmaps_ext: invalid bitmap directory offset");
        if (size > (ulong)Qcow2Format.MaxBitmapDirectorySize)
            throw Qcow2Errors.CorruptAtOpen(path, $"bitmaps_ext: bitmap directory size ({size}) exceeds the maximum supported size ({Qcow2Format.MaxBitmapDirectorySize})");
        return new Extension(count, size, offset);
    }

    public static byte[] SerializeExtension(Extension ext)
    {
        var data = new byte[Qcow2Format.BitmapsExtensionLength];
        BinaryPrimitives.WriteUInt32BigEndian(data, ext.Count);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(8), ext.DirectorySize);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(16), ext.DirectoryOffset);
        return data;
    }

    /// <summary>
    /// Parses <paramref name="count"/> entries of a directory (QEMU's bitmap_list_load), checking each
    /// against an image of <paramref name="imageSize"/> bytes and <paramref name="clusterSize"/>-byte clusters.
    /// </summary>
    public static List<Qcow2BitmapEntry> Parse(ReadOnlySpan<byte> directory, uint count, int clusterSize, long imageSize, string path)
    {
        var entries = new List<Qcow2BitmapEntry>((int)count);
        var names = new HashSet<string>(StringComparer.Ordinal);
        var pos = 0;
        for (var i = 0u; i < count; i++)
        {
            if (directory.Length - pos < Qcow2Format.BitmapDirectoryEntryHeaderLength)
                throw Qcow2Errors.CorruptAtOpen(path, "Broken bitmap directory");
            var e = directory[pos..];
            var tableOffset = BinaryPrimitives.ReadUInt64BigEndian(e);
            var tableSize = BinaryPrimitives.ReadUInt32BigEndian(e[8..]);
            var flags = BinaryPrimitives.ReadUInt32BigEndian(e[12..]);
            var type = e[16];
            var granularityBits = e[17];
            var nameSize = BinaryPrimitives.ReadUInt16BigEndian(e[18..]);
            var extraSize = BinaryPrimitives.ReadUInt32BigEndian(e[20..]);
            var length = EntryLength(nameSize, extraSize);
            if (length > directory.Length - pos)
                throw Qcow2Errors.CorruptAtOpen(path, "Broken bitmap directory");
            var extra = e.Slice(Qcow2Format.BitmapDirectoryEntryHeaderLength, (int)extraSize).ToArray();
            var name = Encoding.UTF8.GetString(e.Slice(Qcow2Format.BitmapDirectoryEntryHeaderLength + (int)extraSize, nameSize));
            var entry = new Qcow2BitmapEntry(tableOffset, tableSize, flags, granularityBits, name, extra);
            if (!IsValid(entry, type, clusterSize, imageSize))
                throw Qcow2Errors.CorruptAtOpen(path, $"Bitmap '{name}' doesn't satisfy the constraints");
            // QEMU knows no extra data, so it cannot use a bitmap that has some (qcow2.txt allows keeping
            // it with extra_data_compatible, which QEMU does not do either).
            if (extraSize != 0)
                throw Qcow2Errors.Unsupported(path, $"Bitmap '{name}': bitmap extra data is not supported");
            if (!names.Add(name))
                throw Qcow2Errors.CorruptAtOpen(path, $"Bitmap directory: two bitmaps named '{name}'");
            entries.Add(entry);
            pos += (int)length;
        }
        return entries;
    }

    /// <summary>QEMU's check_dir_entry.</summary>
    private static bool IsValid(Qcow2BitmapEntry e, byte type, int clusterSize, long imageSize)
    {
        if (e.TableSize == 0 || e.TableOffset == 0 || e.TableOffset % (ulong)clusterSize != 0
            || e.TableSize > Qcow2Format.MaxBitmapTableSize
            || e.GranularityBits is < Qcow2Format.MinBitmapGranularityBits or > Qcow2Format.MaxBitmapGranularityBits
            || (e.Flags & Qcow2Format.BitmapReservedFlags) != 0
            || Encoding.UTF8.GetByteCount(e.Name) > Qcow2Format.MaxBitmapNameSize
            || type != Qcow2Format.BitmapTypeDirtyTracking)
            return false;
        // The table must cover the whole image.
        var coveredGranules = (ulong)e.TableSize * (ulong)clusterSize * 8;
        return (ulong)GranulesFor(imageSize, e.GranularityBits) <= coveredGranules;
    }

    /// <summary>The directory's bytes for <paramref name="entries"/> (QEMU's bitmap_list_store layout).</summary>
    public static byte[] Serialize(IReadOnlyList<Qcow2BitmapEntry> entries)
    {
        var size = 0L;
        foreach (var e in entries)
            size += EntryLength((ushort)Encoding.UTF8.GetByteCount(e.Name), (uint)e.ExtraData.Length);
        var directory = new byte[size];
        var pos = 0;
        foreach (var e in entries)
        {
            var name = Encoding.UTF8.GetBytes(e.Name);
            var span = directory.AsSpan(pos);
            BinaryPrimitives.WriteUInt64BigEndian(span, e.TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span[8..], e.TableSize);
            BinaryPrimitives.WriteUInt32BigEndian(span[12..], e.Flags);
            span[16] = Qcow2Format.BitmapTypeDirtyTracking;
            span[17] = (byte)e.GranularityBits;
            BinaryPrimitives.WriteUInt16BigEndian(span[18..], (ushort)name.Length);
            BinaryPrimitives.WriteUInt32BigEndian(span[20..], (uint)e.ExtraData.Length);
            e.ExtraData.CopyTo(span[Qcow2Format.BitmapDirectoryEntryHeaderLength..]);
            name.CopyTo(span[(Qcow2Format.BitmapDirectoryEntryHeaderLength + e.ExtraData.Length)..]);
            pos += (int)EntryLength((ushort)name.Length, (uint)e.ExtraData.Length);
        }
        return directory;
    }

    /// <summary>An entry's length in the directory: header, extra data and name, padded to 8 bytes.</summary>
    public static long EntryLength(ushort nameSize, uint extraSize) =>
        (Qcow2Format.BitmapDirectoryEntryHeaderLength + (long)extraSize + nameSize + 7) & ~7L;

    /// <summary>Granules of a bitmap of <paramref name="granularityBits"/> over <paramref name="imageSize"/> bytes.</summary>
    public static long GranulesFor(long imageSize, int granularityBits) =>
        (imageSize + (1L << granularityBits) - 1) >> granularityBits;

    /// <summary>Entries of a bitmap table: each data cluster holds cluster_size × 8 granules (QEMU's get_bitmap_bytes_needed / cluster size).</summary>
    public static uint TableSizeFor(long imageSize, int granularityBits, int clusterSize)
    {
        var granules = GranulesFor(imageSize, granularityBits);
        var bitsPerCluster = (long)clusterSize * 8;
        return (uint)Math.Max(1, (granules + bitsPerCluster - 1) / bitsPerCluster);
    }

    /// <summary>QEMU's check_table_entry: reserved bits clear, a data cluster aligned, the all-ones flag only without one.</summary>
    public static bool IsValidTableEntry(ulong entry, int clusterSize)
    {
        if ((entry & Qcow2Format.BitmapTableReservedMask) != 0)
            return false;
        var offset = entry & Qcow2Format.BitmapTableOffsetMask;
        if (offset == 0)
            return true;
        return (entry & Qcow2Format.BitmapTableAllOnes) == 0 && offset % (ulong)clusterSize == 0;
    }

    /// <summary>Decodes a table as stored (big-endian entries).</summary>
    public static ulong[] ParseTable(ReadOnlySpan<byte> bytes, uint size)
    {
        var table = new ulong[size];
        for (var i = 0; i < table.Length; i++)
            table[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes[(i * 8)..]);
        return table;
    }

    public static byte[] SerializeTable(ReadOnlySpan<ulong> table)
    {
        var bytes = new byte[table.Length * 8];
        for (var i = 0; i < table.Length; i++)
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), table[i]);
        return bytes;
    }
}
