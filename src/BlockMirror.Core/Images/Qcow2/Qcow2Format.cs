namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The on-disk constants of qcow2 (docs/interop/qcow2.txt; QEMU's block/qcow2.h). Everything on disk
/// is big-endian.
/// </summary>
internal static class Qcow2Format
{
    /// <summary>"QFI\xfb".</summary>
    internal const uint Magic = 0x514649fb;

    internal const int MinClusterBits = 9;
    internal const int MaxClusterBits = 21;

    /// <summary>Version 2 headers end here; version 3 ones are at least <see cref="V3MinHeaderLength"/>.</summary>
    internal const int V2HeaderLength = 72;
    internal const int V3MinHeaderLength = 104;

    /// <summary>What QEMU writes as header_length for version 3: the 104 bytes plus compression_type, padded to 8.</summary>
    internal const int V3HeaderLength = 112;

    // Field offsets that are rewritten in place (the rest of the first cluster is never touched).
    internal const int RefcountTableOffsetField = 48;
    internal const int IncompatibleFeaturesField = 72;
    internal const int AutoclearFeaturesField = 88;
    internal const int CompressionTypeField = 104;

    // Incompatible feature bits.
    internal const ulong IncompatDirty = 1UL << 0;
    internal const ulong IncompatCorrupt = 1UL << 1;
    internal const ulong IncompatDataFile = 1UL << 2;
    internal const ulong IncompatCompression = 1UL << 3;
    internal const ulong IncompatExtendedL2 = 1UL << 4;

    // Compatible feature bits.
    internal const ulong CompatLazyRefcounts = 1UL << 0;

    // Autoclear feature bits.
    internal const ulong AutoclearBitmaps = 1UL << 0;
    internal const ulong AutoclearDataFileRaw = 1UL << 1;

    /// <summary>
    /// The autoclear bits this driver keeps when it opens an image read-write. An autoclear bit says
    /// "the data of this feature is consistent"; a writer that does not maintain the feature must clear
    /// it (qcow2.txt). The bitmaps extension is maintained (Qcow2Image.Bitmaps.cs: marked in use at a
    /// read-write open, stored at a clean close), so its bit stays.
    /// </summary>
    internal const ulong SupportedAutoclear = AutoclearBitmaps;

    // The bitmaps extension (qcow2.txt "Bitmaps extension"; QEMU's block/qcow2-bitmap.c).
    internal const int BitmapsExtensionLength = 24;
    internal const int BitmapDirectoryEntryHeaderLength = 24;
    internal const uint MaxBitmaps = 65535;
    internal const long MaxBitmapDirectorySize = 1024L * MaxBitmaps;
    internal const int MaxBitmapNameSize = 1023;
    internal const uint MaxBitmapTableSize = 0x8000000;
    internal const int MinBitmapGranularityBits = 9;
    internal const int MaxBitmapGranularityBits = 31;
    internal const byte BitmapTypeDirtyTracking = 1;
    internal const uint BitmapFlagInUse = 1u << 0;
    internal const uint BitmapFlagAuto = 1u << 1;
    internal const uint BitmapFlagExtraDataCompatible = 1u << 2;
    internal const uint BitmapReservedFlags = ~(BitmapFlagInUse | BitmapFlagAuto | BitmapFlagExtraDataCompatible);
    internal const ulong BitmapTableOffsetMask = 0x00fffffffffffe00UL;
    internal const ulong BitmapTableReservedMask = 0xff000000000001feUL;

    /// <summary>A bitmap table entry without a data cluster whose granules are all dirty.</summary>
    internal const ulong BitmapTableAllOnes = 1UL;

    // Compression types (header byte 104).
    internal const byte CompressionZlib = 0;
    internal const byte CompressionZstd = 1;

    // Crypt methods.
    internal const uint CryptNone = 0;
    internal const uint CryptAes = 1;
    internal const uint CryptLuks = 2;

    // Header extension types.
    internal const uint ExtEnd = 0x00000000;
    internal const uint ExtBackingFormat = 0xe2792aca;
    internal const uint ExtFeatureTable = 0x6803f857;
    internal const uint ExtBitmaps = 0x23852875;
    internal const uint ExtCryptoHeader = 0x0537be77;
    internal const uint ExtDataFile = 0x44415441;

    // L1 / L2 / refcount table entry fields.
    internal const ulong L1OffsetMask = 0x00fffffffffffe00UL;
    internal const ulong L1ReservedMask = 0x7f000000000001ffUL;
    internal const ulong L2OffsetMask = 0x00fffffffffffe00UL;
    internal const ulong L2StandardReservedMask = 0x3f000000000001feUL;
    internal const ulong RefcountTableOffsetMask = 0xfffffffffffffe00UL;
    internal const ulong RefcountTableReservedMask = 0x1ffUL;

    /// <summary>Refcount is exactly one: a write may go in place (L1 and standard L2 entries).</summary>
    internal const ulong FlagCopied = 1UL << 63;
    internal const ulong FlagCompressed = 1UL << 62;

    /// <summary>Standard cluster reads as zeroes (version 3, without extended L2 entries).</summary>
    internal const ulong FlagZero = 1UL << 0;

    /// <summary>Compressed data is addressed in 512-byte sectors.</summary>
    internal const int CompressedSectorSize = 512;

    internal const int SubclustersPerExtendedCluster = 32;

    /// <summary>All 32 "reads as zeroes" bits of an extended L2 bitmap (and no allocation bits).</summary>
    internal const ulong BitmapAllZeroes = 0xffffffffUL << 32;

    internal const ulong BitmapAllAllocated = 0xffffffffUL;

    // QEMU's implementation limits (block/qcow2.h), so that what QEMU cannot open is not made here.
    internal const long MaxL1Bytes = 32L << 20;
    internal const long MaxRefcountTableBytes = 8L << 20;
    internal const int MaxBackingFileNameLength = 1023;
}
