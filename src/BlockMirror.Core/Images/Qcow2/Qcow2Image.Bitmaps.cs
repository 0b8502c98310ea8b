using System.Numerics;
using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The bitmaps stored in the image (qcow2.txt "Bitmaps extension"; QEMU's block/qcow2-bitmap.c).
/// At open the directory is read and checked; a read-write open marks every bitmap in use before
/// anything is written (QEMU's qcow2_load_dirty_bitmaps), so other programs see them as in use while
/// this image may change under them. Stores replace the directory as QEMU does: new data clusters,
/// tables and directory written and made durable, the header switched to the new directory in one
/// write, then the old clusters freed. So a crash at any point leaves the old directory or the new
/// one, and at worst leaked clusters.
/// </summary>
public sealed partial class Qcow2Image
{
    /// <summary>QEMU's message when a persistent bitmap is asked of a version 2 image.</summary>
    public const string CannotStoreInV2 = "Cannot store dirty bitmaps in qcow2 v2 files";

    private List<Qcow2BitmapEntry> _bitmapEntries = [];
    private Qcow2BitmapDirectory.Extension? _bitmapsExtension;

    /// <summary>The bitmaps the image held when it was opened, with their flags as found.</summary>
    public IReadOnlyList<Qcow2StoredBitmap> BitmapsAtOpen { get; private set; } = [];

    /// <summary>The bitmaps the image's directory holds now.</summary>
    public IReadOnlyList<Qcow2StoredBitmap> StoredBitmaps => [.. Volatile.Read(ref _bitmapEntries).Select(ToStored)];

    /// <summary>Whether the image can hold bitmaps (version 3; QEMU refuses with <see cref="CannotStoreInV2"/>).</summary>
    public bool CanStoreBitmaps => _header.Version >= 3;

    private static Qcow2StoredBitmap ToStored(Qcow2BitmapEntry e) => new(e.Name, e.Granularity, e.InUse, e.Auto);

    /// <summary>
    /// Reads the directory (when the autoclear bit vouches for it; without, a program that does not
    /// know bitmaps wrote the image and QEMU ignores them too), and on a read-write open marks every
    /// bitmap in use in place, as QEMU's update_ext_header_and_dir_in_place: the autoclear bit cleared
    /// first, so a torn directory write is never trusted.
    /// </summary>
    private void LoadBitmapsAtOpen(string name)
    {
        if (_header.Version < 3 || (_header.AutoclearFeatures & Qcow2Format.AutoclearBitmaps) == 0 || _header.BitmapsExtension is not { } data)
            return;
        Qcow2BitmapDirectory.Extension ext;
        List<Qcow2BitmapEntry> entries;
        try
        {
            ext = Qcow2BitmapDirectory.ParseExtension(data, _g.ClusterSize, name);
            var directory = new byte[ext.DirectorySize];
            _file.Read((long)ext.DirectoryOffset, directory);
            entries = Qcow2BitmapDirectory.Parse(directory, ext.Count, _g.ClusterSize, Size, name);
        }
        catch (BlockException) when (ReadOnly)
        {
            // Read-only (a backing image, a read-only node): its bitmaps cannot be used, but its data
            // can. A writer refuses the image, as QEMU does, rather than rewrite what it cannot read.
            return;
        }
        BitmapsAtOpen = [.. entries.Select(ToStored)];
        _bitmapsExtension = ext;
        if (!ReadOnly && entries.Any(e => !e.InUse))
        {
            entries = [.. entries.Select(e => e with { Flags = e.Flags | Qcow2Format.BitmapFlagInUse })];
            var rewritten = Qcow2BitmapDirectory.Serialize(entries);
            WriteFeatureField(_file, Qcow2Format.AutoclearFeaturesField, _header.AutoclearFeatures & ~Qcow2Format.AutoclearBitmaps);
            _file.Flush();
            _file.Write((long)ext.DirectoryOffset, rewritten);
            _file.Flush();
            WriteFeatureField(_file, Qcow2Format.AutoclearFeaturesField, _header.AutoclearFeatures);
            _file.Flush();
        }
        _bitmapEntries = entries;
    }

    /// <summary>
    /// The bits of a stored bitmap in <see cref="DirtyBitmap.Serialize"/>'s form (granule i is bit
    /// i % 8 of byte i / 8, qcow2's order too). Throws <c>image-corrupt</c> for a bad table entry.
    /// </summary>
    public byte[] ReadStoredBitmap(string bitmapName)
    {
        _meta.Wait();
        try
        {
            var entry = _bitmapEntries.Find(e => e.Name == bitmapName)
                ?? throw new KeyNotFoundException($"The image holds no bitmap '{bitmapName}'");
            return ReadBitmapContent(entry);
        }
        finally
        {
            _meta.Release();
        }
    }

    private byte[] ReadBitmapContent(Qcow2BitmapEntry entry)
    {
        var granules = Qcow2BitmapDirectory.GranulesFor(Size, entry.GranularityBits);
        var content = new byte[HBitmap.SerializedLengthFor(granules)];
        var table = ReadBitmapTable(entry);
        var cs = _g.ClusterSize;
        for (var i = 0; i < table.Length && (long)i * cs < content.Length; i++)
        {
            var chunk = content.AsSpan(i * cs, (int)Math.Min(cs, content.Length - ((long)i * cs)));
            var offset = table[i] & Qcow2Format.BitmapTableOffsetMask;
            if (offset != 0)
                _file.Read((long)offset, chunk);
            else if ((table[i] & Qcow2Format.BitmapTableAllOnes) != 0)
                chunk.Fill(0xff);
        }
        // Bits past the last granule mean nothing (an all-ones cluster sets them).
        var tailBits = (int)(granules % 64);
        if (tailBits != 0)
        {
            var last = content.AsSpan(content.Length - 8);
            var word = BitConverter.ToUInt64(last) & ((1UL << tailBits) - 1);
            BitConverter.TryWriteBytes(last, word);
        }
        return content;
    }

    private ulong[] ReadBitmapTable(Qcow2BitmapEntry entry)
    {
        var bytes = new byte[entry.TableSize * 8L];
        _file.Read((long)entry.TableOffset, bytes);
        var table = Qcow2BitmapDirectory.ParseTable(bytes, entry.TableSize);
        foreach (var t in table)
        {
            if (!Qcow2BitmapDirectory.IsValidTableEntry(t, _g.ClusterSize))
                throw Qcow2Errors.Corrupt(Location, $"bitmap '{entry.Name}' has an invalid table entry {t:x}");
        }
        return table;
    }

    /// <summary>
    /// Makes the directory hold exactly <paramref name="bitmaps"/>, in their order (QEMU's
    /// qcow2_store_persistent_dirty_bitmaps, and its in-use marking): a bitmap with content gets new
    /// data clusters (all-zero ones stay unallocated) and a new table; one without keeps its table
    /// (a new one gets an all-clear table); bitmaps the directory holds and the list does not are
    /// removed. Refused with <c>bitmap-not-storable</c> on a version 2 image.
    /// </summary>
    public async ValueTask StoreBitmapsAsync(IReadOnlyList<Qcow2BitmapToStore> bitmaps, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(bitmaps);
        ThrowIfNotWritable();
        if (!CanStoreBitmaps)
            throw BlockErrors.Invalid("bitmap-not-storable", CannotStoreInV2);
        await _meta.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await EnsureWritableLockedAsync().ConfigureAwait(false);
            var allocated = new List<(long Offset, long Length)>();
            try
            {
                var kept = new HashSet<Qcow2BitmapEntry>(ReferenceEqualityComparer.Instance);
                var entries = new List<Qcow2BitmapEntry>(bitmaps.Count);
                foreach (var b in bitmaps)
                {
                    var bits = BitOperations.Log2((ulong)b.Granularity);
                    var flags = (b.Auto ? Qcow2Format.BitmapFlagAuto : 0) | (b.InUse ? Qcow2Format.BitmapFlagInUse : 0);
                    var existing = _bitmapEntries.Find(e => e.Name == b.Name);
                    if (b.Content is null && existing is not null && existing.GranularityBits == bits)
                    {
                        kept.Add(existing);
                        entries.Add(existing with { Flags = flags });
                        continue;
                    }
                    var tableOffset = await WriteBitmapTableLockedAsync(bits, b.Content, allocated).ConfigureAwait(false);
                    entries.Add(new Qcow2BitmapEntry((ulong)tableOffset, Qcow2BitmapDirectory.TableSizeFor(Size, bits, _g.ClusterSize), flags, bits, b.Name, []));
                }
                var dropped = _bitmapEntries.Where(e => !kept.Contains(e)).ToList();
                await SwitchDirectoryLockedAsync(entries, dropped, allocated).ConfigureAwait(false);
            }
            catch
            {
                // Nothing points to what was allocated (the header was not switched): give it back.
                foreach (var (offset, length) in allocated)
                    await TryFreeLockedAsync(offset, length).ConfigureAwait(false);
                throw;
            }
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>Removes one bitmap from the image at once (QEMU's qcow2_co_remove_persistent_dirty_bitmap); the others stay as they are.</summary>
    public async ValueTask RemoveBitmapAsync(string bitmapName, CancellationToken cancellationToken = default)
    {
        ThrowIfNotWritable();
        await _meta.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var entry = _bitmapEntries.Find(e => e.Name == bitmapName);
            if (entry is null)
                return;
            await EnsureWritableLockedAsync().ConfigureAwait(false);
            var allocated = new List<(long, long)>();
            await SwitchDirectoryLockedAsync([.. _bitmapEntries.Where(e => e != entry)], [entry], allocated).ConfigureAwait(false);
        }
        finally
        {
            _meta.Release();
        }
    }

    /// <summary>Writes a bitmap's data clusters and table into new clusters; returns the table's offset.</summary>
    private async ValueTask<long> WriteBitmapTableLockedAsync(int granularityBits, byte[]? content, List<(long Offset, long Length)> allocated)
    {
        var cs = _g.ClusterSize;
        var table = new ulong[Qcow2BitmapDirectory.TableSizeFor(Size, granularityBits, cs)];
        if (content is not null)
        {
            var expected = HBitmap.SerializedLengthFor(Qcow2BitmapDirectory.GranulesFor(Size, granularityBits));
            if (content.Length != expected)
                throw new ArgumentException($"A bitmap of granularity {1L << granularityBits} over {Size} bytes has {expected} bytes of content, not {content.Length}");
            var cluster = new byte[cs];
            for (var i = 0; i < table.Length && (long)i * cs < content.Length; i++)
            {
                var chunk = content.AsSpan(i * cs, (int)Math.Min(cs, content.Length - ((long)i * cs)));
                if (!chunk.ContainsAnyExcept((byte)0))
                    continue; // an all-zeroes entry: no cluster (QEMU's store_bitmap_data)
                cluster.AsSpan().Clear();
                chunk.CopyTo(cluster);
                var (offset, _) = await Refcounts.AllocateAsync(1).ConfigureAwait(false);
                allocated.Add((offset, cs));
                await _file.WriteAsync(offset, cluster).ConfigureAwait(false);
                table[i] = (ulong)offset;
            }
        }
        var bytes = Qcow2BitmapDirectory.SerializeTable(table);
        return await WriteNewClustersLockedAsync(bytes, allocated).ConfigureAwait(false);
    }

    /// <summary>Writes <paramref name="bytes"/> into newly allocated contiguous clusters (the tail zero-padded).</summary>
    private async ValueTask<long> WriteNewClustersLockedAsync(byte[] bytes, List<(long Offset, long Length)> allocated)
    {
        var clusters = _g.ClustersFor(bytes.Length);
        var (offset, _) = await Refcounts.AllocateAsync(clusters).ConfigureAwait(false);
        allocated.Add((offset, clusters << _g.ClusterBits));
        var padded = new byte[clusters << _g.ClusterBits];
        bytes.CopyTo(padded, 0);
        await _file.WriteAsync(offset, padded).ConfigureAwait(false);
        return offset;
    }

    /// <summary>
    /// Writes the new directory, makes it and everything it points to durable (refcounts included),
    /// switches the header to it, and frees the old directory and the dropped bitmaps' clusters (QEMU's
    /// update_ext_header_and_dir followed by free_bitmap_clusters).
    /// </summary>
    private async ValueTask SwitchDirectoryLockedAsync(List<Qcow2BitmapEntry> entries, List<Qcow2BitmapEntry> dropped, List<(long Offset, long Length)> allocated)
    {
        var old = _bitmapsExtension;
        var droppedClusters = new List<(long Offset, long Length)>();
        foreach (var e in dropped)
        {
            droppedClusters.Add(((long)e.TableOffset, e.TableSize * 8L));
            foreach (var t in ReadBitmapTableForFree(e))
                droppedClusters.Add((t, _g.ClusterSize));
        }

        Qcow2BitmapDirectory.Extension? ext = null;
        if (entries.Count > 0)
        {
            var directory = Qcow2BitmapDirectory.Serialize(entries);
            var offset = await WriteNewClustersLockedAsync(directory, allocated).ConfigureAwait(false);
            ext = new Qcow2BitmapDirectory.Extension((uint)entries.Count, (ulong)directory.Length, (ulong)offset);
        }
        // Refcounts (and any mapping change) written, then everything durable before the header points at it.
        await SyncMetadataLockedAsync().ConfigureAwait(false);
        await FileSyncAsync().ConfigureAwait(false);

        _header.OtherExtensions.RemoveAll(e => e.Type == Qcow2Format.ExtBitmaps);
        if (ext is { } written)
        {
            _header.OtherExtensions.Insert(0, new Qcow2HeaderExtension(Qcow2Format.ExtBitmaps, Qcow2BitmapDirectory.SerializeExtension(written)));
            _header.AutoclearFeatures |= Qcow2Format.AutoclearBitmaps;
        }
        await _file.WriteAsync(0, _header.Serialize(_g.ClusterSize)).ConfigureAwait(false);
        await FileSyncAsync().ConfigureAwait(false);
        allocated.Clear(); // referenced now: no longer ours to give back on failure
        Volatile.Write(ref _bitmapEntries, entries);
        _bitmapsExtension = ext;

        // Nothing points to these any more, durably.
        if (old is { } previous)
            await Refcounts.DecrementNowAsync((long)previous.DirectoryOffset, (long)previous.DirectorySize).ConfigureAwait(false);
        foreach (var (offset, length) in droppedClusters)
            await Refcounts.DecrementNowAsync(offset, length).ConfigureAwait(false);
        await Refcounts.WriteDirtyAsync().ConfigureAwait(false);
    }

    /// <summary>The data clusters of a bitmap about to be dropped (entries that are not valid are left alone: they leak, as QEMU leaves them).</summary>
    private List<long> ReadBitmapTableForFree(Qcow2BitmapEntry entry)
    {
        var bytes = new byte[entry.TableSize * 8L];
        _file.Read((long)entry.TableOffset, bytes);
        var result = new List<long>();
        foreach (var t in Qcow2BitmapDirectory.ParseTable(bytes, entry.TableSize))
        {
            var offset = t & Qcow2Format.BitmapTableOffsetMask;
            if (offset != 0 && Qcow2BitmapDirectory.IsValidTableEntry(t, _g.ClusterSize))
                result.Add((long)offset);
        }
        return result;
    }

    private async ValueTask TryFreeLockedAsync(long offset, long length)
    {
        try
        {
            await Refcounts.DecrementNowAsync(offset, length).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or BlockException)
        {
            // A leak at worst; the original failure is what the caller needs.
        }
    }
}
