using System.Runtime.CompilerServices;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// A write-back cache of metadata slices (QEMU's Qcow2Cache): L2 table slices or refcount block slices,
/// keyed by their offset in the file, least recently used evicted first. Used only under the image's
/// metadata lock, so it needs no lock of its own; a slot in use across an await is pinned so that a
/// nested lookup cannot evict it. Before a dirty slice is written back, <see cref="BeforeWriteback"/>
/// runs: the L2 cache uses it to make refcount increments durable first (QEMU's cache dependency).
/// </summary>
internal sealed class Qcow2MetadataCache
{
    private readonly IQcow2File _file;
    private readonly int _capacity;
    private readonly Dictionary<long, int> _index;
    private readonly List<byte[]> _buffers = [];
    private readonly List<long> _offsets = [];
    private readonly List<bool> _dirty = [];
    private readonly List<int> _pins = [];
    private readonly List<long> _lastUse = [];
    private long _clock;
    private int _dirtyCount;

    public Qcow2MetadataCache(IQcow2File file, int sliceSize, int capacity)
    {
        _file = file;
        SliceSize = sliceSize;
        _capacity = Math.Max(capacity, 4);
        _index = new Dictionary<long, int>(Math.Min(_capacity, 1024));
    }

    public int SliceSize { get; }

    /// <summary>Runs before any dirty slice is written (once per write-back pass).</summary>
    public Func<ValueTask>? BeforeWriteback { get; set; }

    public bool HasDirty => _dirtyCount > 0;

    /// <summary>Set whenever a slice was written to the file; the owner clears it after an fdatasync.</summary>
    public bool WrittenSinceSync { get; set; }

    /// <summary>Slices written since the cache was made (tells whether anything was written between two moments).</summary>
    public long Writes { get; private set; }

    /// <summary>The slot holding the slice at <paramref name="offset"/>, read from the file on a miss; pinned until <see cref="Release"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> GetAsync(long offset)
    {
        if (_index.TryGetValue(offset, out var slot))
        {
            Pin(slot);
            return slot;
        }
        slot = await FreeSlotAsync().ConfigureAwait(false);
        try
        {
            await _file.ReadAsync(offset, _buffers[slot]).ConfigureAwait(false);
        }
        catch
        {
            _offsets[slot] = -1;
            throw;
        }
        _offsets[slot] = offset;
        _index[offset] = slot;
        Pin(slot);
        return slot;
    }

    /// <summary>The slot holding the slice at <paramref name="offset"/> when it is cached (pinned until <see cref="Release"/>); never reads.</summary>
    public bool TryGetCached(long offset, out int slot)
    {
        if (!_index.TryGetValue(offset, out slot))
            return false;
        Pin(slot);
        return true;
    }

    public byte[] Buffer(int slot) => _buffers[slot];

    public void MarkDirty(int slot)
    {
        if (!_dirty[slot])
        {
            _dirty[slot] = true;
            _dirtyCount++;
        }
    }

    public void Release(int slot) => _pins[slot]--;

    /// <summary>Writes every dirty slice (after <see cref="BeforeWriteback"/>), in file order.</summary>
    public async ValueTask WriteDirtyAsync()
    {
        if (_dirtyCount == 0)
            return;
        if (BeforeWriteback is { } before)
            await before().ConfigureAwait(false);
        var slots = new List<int>(_dirtyCount);
        for (var i = 0; i < _offsets.Count; i++)
        {
            if (_dirty[i])
                slots.Add(i);
        }
        slots.Sort((a, b) => _offsets[a].CompareTo(_offsets[b]));
        foreach (var slot in slots)
            await WriteSlotAsync(slot).ConfigureAwait(false);
    }

    /// <summary>Forgets every slice (after the structures they came from were replaced on disk). Nothing may be dirty.</summary>
    public void Clear()
    {
        if (_dirtyCount != 0)
            throw new InvalidOperationException("Dirty metadata slices would be lost");
        _index.Clear();
        for (var i = 0; i < _offsets.Count; i++)
            _offsets[i] = -1;
    }

    private void Pin(int slot)
    {
        _pins[slot]++;
        _lastUse[slot] = ++_clock;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteSlotAsync(int slot)
    {
        await _file.WriteAsync(_offsets[slot], _buffers[slot]).ConfigureAwait(false);
        WrittenSinceSync = true;
        Writes++;
        _dirty[slot] = false;
        _dirtyCount--;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<int> FreeSlotAsync()
    {
        if (_buffers.Count < _capacity)
        {
            _buffers.Add(new byte[SliceSize]);
            _offsets.Add(-1);
            _dirty.Add(false);
            _pins.Add(0);
            _lastUse.Add(0);
            return _buffers.Count - 1;
        }

        // A slot dropped by Clear or a failed read first; else the least recently used unpinned one,
        // clean ones before dirty ones (a dirty victim costs a write, and for L2 slices a flush first).
        var victim = -1;
        var victimDirty = true;
        long victimUse = long.MaxValue;
        for (var i = 0; i < _offsets.Count; i++)
        {
            if (_pins[i] != 0)
                continue;
            if (_offsets[i] < 0)
                return i;
            var dirty = _dirty[i];
            if ((victimDirty && !dirty) || (dirty == victimDirty && _lastUse[i] < victimUse))
            {
                victim = i;
                victimDirty = dirty;
                victimUse = _lastUse[i];
            }
        }
        if (victim < 0)
            throw new InvalidOperationException("Every metadata cache slot is pinned");
        if (victimDirty)
        {
            if (BeforeWriteback is { } before)
                await before().ConfigureAwait(false);
            // The hook may have written (and so cleaned) it; it cannot have evicted it (pins only grow under us).
            if (_dirty[victim])
                await WriteSlotAsync(victim).ConfigureAwait(false);
        }
        _index.Remove(_offsets[victim]);
        _offsets[victim] = -1;
        return victim;
    }
}
