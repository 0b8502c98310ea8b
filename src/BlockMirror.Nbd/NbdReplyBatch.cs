using System.Buffers;

namespace BlockMirror.Nbd;

/// <summary>
/// Replies waiting to go out together in one send (one sendmsg with a segment per buffer): small
/// replies are copied into one coalescing buffer, so consecutive ones form a single segment; a
/// reply built in a pooled buffer (a read's data behind its header) is queued as it is, without a
/// copy, and the buffer goes back to the pool once sent (<c>ArrayPool</c>'s, or
/// <see cref="NbdAlignedBuffers"/> for a direct export's reads).
/// </summary>
internal sealed class NbdReplyBatch
{
    /// <summary>Room for the small replies of a batch (2,048 simple replies); more spill into pooled buffers.</summary>
    private const int CoalesceBufferSize = 32 * 1024;

    private readonly byte[] _coalesced = GC.AllocateUninitializedArray<byte>(CoalesceBufferSize);
    private readonly List<ArraySegment<byte>> _segments = [];
    private readonly List<(byte[] Buffer, bool Aligned)> _pooled = [];
    private int _coalescedUsed;

    public bool IsEmpty => _segments.Count == 0;

    /// <summary>The segments in order, for one gathering send.</summary>
    public IList<ArraySegment<byte>> Segments => _segments;

    /// <summary>Total bytes queued.</summary>
    public int Length { get; private set; }

    /// <summary>Queues a copy of <paramref name="reply"/>.</summary>
    public void AddCopy(ReadOnlySpan<byte> reply)
    {
        if (reply.Length > CoalesceBufferSize - _coalescedUsed)
        {
            var own = ArrayPool<byte>.Shared.Rent(reply.Length);
            reply.CopyTo(own);
            AddPooled(own, 0, reply.Length, aligned: false);
            return;
        }
        reply.CopyTo(_coalesced.AsSpan(_coalescedUsed));
        if (_segments.Count > 0 && _segments[^1] is var last && last.Array == _coalesced && last.Offset + last.Count == _coalescedUsed)
            _segments[^1] = new ArraySegment<byte>(_coalesced, last.Offset, last.Count + reply.Length);
        else
            _segments.Add(new ArraySegment<byte>(_coalesced, _coalescedUsed, reply.Length));
        _coalescedUsed += reply.Length;
        Length += reply.Length;
    }

    /// <summary>Queues [offset, +length) of a pooled buffer, which the batch now owns (<paramref name="aligned"/>: from <see cref="NbdAlignedBuffers"/>, else <c>ArrayPool</c>).</summary>
    public void AddPooled(byte[] buffer, int offset, int length, bool aligned)
    {
        _segments.Add(new ArraySegment<byte>(buffer, offset, length));
        _pooled.Add((buffer, aligned));
        Length += length;
    }

    /// <summary>Forgets what was queued (sent or dropped) and returns the pooled buffers.</summary>
    public void Clear()
    {
        foreach (var (buffer, aligned) in _pooled)
            NbdAlignedBuffers.Return(buffer, aligned);
        _pooled.Clear();
        _segments.Clear();
        _coalescedUsed = 0;
        Length = 0;
    }
}
