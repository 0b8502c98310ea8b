namespace BlockMirror.Core.Jobs;

/// <summary>
/// A job's copy buffers: at most <c>count</c> pinned arrays of one chunk size, allocated on first
/// use and reused for every later chunk, so the copy loop allocates no buffer per chunk.
/// </summary>
internal sealed class ChunkBufferPool
{
    private readonly Lock _lock = new();
    private readonly Stack<byte[]> _free = new();
    private readonly int _size;

    public ChunkBufferPool(int size) => _size = size;

    public int BufferSize => _size;

    public byte[] Rent()
    {
        lock (_lock)
        {
            if (_free.TryPop(out var buffer))
                return buffer;
        }
        return GC.AllocateUninitializedArray<byte>(_size, pinned: true);
    }

    public void Return(byte[] buffer)
    {
        lock (_lock)
            _free.Push(buffer);
    }
}
