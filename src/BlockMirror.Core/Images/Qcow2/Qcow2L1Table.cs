using System.Buffers.Binary;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The active L1 table, held in memory whole (QEMU's s->l1_table; at most 32 MiB). Changed entries
/// are written back in 4 KiB chunks, and only after the L2 tables they point to are on disk.
/// </summary>
internal sealed class Qcow2L1Table
{
    private const int ChunkEntries = 512;

    private readonly IQcow2File _file;
    private readonly ulong[] _entries;
    private readonly bool[] _dirtyChunks;
    private int _dirtyCount;

    private Qcow2L1Table(IQcow2File file, long offset, ulong[] entries)
    {
        _file = file;
        Offset = offset;
        _entries = entries;
        _dirtyChunks = new bool[(entries.Length + ChunkEntries - 1) / ChunkEntries];
    }

    public long Offset { get; }

    public int Length => _entries.Length;

    public bool HasDirty => _dirtyCount > 0;

    public static Qcow2L1Table Read(IQcow2File file, long offset, int length)
    {
        var bytes = new byte[length * 8L];
        file.Read(offset, bytes);
        var entries = new ulong[length];
        for (var i = 0; i < length; i++)
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
        return new Qcow2L1Table(file, offset, entries);
    }

    public ulong this[long index] => _entries[index];

    public void Set(long index, ulong entry)
    {
        _entries[index] = entry;
        var chunk = (int)(index / ChunkEntries);
        if (!_dirtyChunks[chunk])
        {
            _dirtyChunks[chunk] = true;
            _dirtyCount++;
        }
    }

    public async ValueTask WriteDirtyAsync()
    {
        if (_dirtyCount == 0)
            return;
        var bytes = new byte[ChunkEntries * 8];
        for (var chunk = 0; chunk < _dirtyChunks.Length; chunk++)
        {
            if (!_dirtyChunks[chunk])
                continue;
            var first = chunk * ChunkEntries;
            var count = Math.Min(ChunkEntries, _entries.Length - first);
            for (var i = 0; i < count; i++)
                BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), _entries[first + i]);
            await _file.WriteAsync(Offset + (first * 8L), bytes.AsMemory(0, count * 8)).ConfigureAwait(false);
            _dirtyChunks[chunk] = false;
            _dirtyCount--;
        }
    }
}
