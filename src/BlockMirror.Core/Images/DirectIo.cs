using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// Reads and writes of an image opened with O_DIRECT (QEMU's <c>cache.direct=on</c>): the page
/// cache is bypassed, so every request the kernel sees must be aligned, offset and length to
/// <see cref="DirectIoAlignment.Request"/> and the buffer's address to <see cref="DirectIoAlignment.Memory"/>.
/// Callers (an NBD client's 512-byte or odd requests, a mirror's last chunk) need not be: as in
/// QEMU's bdrv_co_preadv/pwritev with a request alignment, a request is widened to whole blocks in
/// a page-aligned bounce buffer (<see cref="AlignedBufferPool"/>); an unaligned write reads its
/// partial head and tail blocks first (read-modify-write) and is serialising
/// (<see cref="TrackedWrites"/>), so no overlapping write can land between its read and its write.
/// A request already aligned, in memory the device can use, goes straight from the caller's buffer.
/// </summary>
internal sealed class DirectIo
{
    private readonly SafeFileHandle _handle;
    private readonly string _location;
    private readonly long _request;
    private readonly long _memory;
    private readonly long? _fileSize;
    private readonly TrackedWrites _writes = new();
    private long _bounced;

    /// <param name="fileSize">
    /// A regular file's size: a read-modify-write of its last, partial block writes a whole block
    /// and so extends the file, which is then cut back to this. Null for a device (it cannot grow).
    /// </param>
    public DirectIo(SafeFileHandle handle, string location, DirectIoAlignment alignment, long? fileSize)
    {
        _handle = handle;
        _location = location;
        _request = alignment.Request;
        _memory = Math.Max(1, alignment.Memory);
        _fileSize = fileSize;
    }

    /// <summary>Reads and writes that went through a bounce buffer (unaligned, or in memory the device cannot use); for tests.</summary>
    public long Bounced => Interlocked.Read(ref _bounced);

    /// <summary>The request alignment, for callers (copy offload) that hand the kernel ranges themselves.</summary>
    public long RequestAlignment => _request;

    /// <summary>True when a request of [offset, +length) needs no widening.</summary>
    public bool IsAligned(long offset, long length) => ((offset | length) & (_request - 1)) == 0;

    /// <summary>Reads exactly <c>buffer.Length</c> bytes at <paramref name="offset"/>; past the end of the file reads zeroes.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.Length == 0)
            return;
        if (IsAligned(offset, buffer.Length))
        {
            using var pin = buffer.Pin();
            if (IsAddressAligned(pin))
            {
                await ReadAlignedAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
                return;
            }
        }
        Interlocked.Increment(ref _bounced);
        var end = offset + buffer.Length;
        for (var position = offset; position < end;)
        {
            var spanStart = AlignDown(position);
            var pieceEnd = Math.Min(end, spanStart + AlignedBufferPool.MaxLength);
            var length = (int)(AlignUp(pieceEnd) - spanStart);
            var bounce = AlignedBufferPool.Rent(length);
            try
            {
                await ReadAlignedAsync(spanStart, bounce.Memory[..length], cancellationToken).ConfigureAwait(false);
                bounce.GetSpan().Slice((int)(position - spanStart), (int)(pieceEnd - position)).CopyTo(buffer.Span[(int)(position - offset)..]);
            }
            finally
            {
                AlignedBufferPool.Return(bounce);
            }
            position = pieceEnd;
        }
    }

    /// <summary>Writes all of <paramref name="data"/> at <paramref name="offset"/> (not durable: the device may cache it).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (data.Length == 0)
            return;
        var write = await _writes.BeginAsync(AlignDown(offset), AlignUp(offset + data.Length), serialising: !IsAligned(offset, data.Length))
            .ConfigureAwait(false);
        try
        {
            await WriteUntrackedAsync(offset, data, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writes.End(write);
        }
    }

    /// <summary>
    /// Writes zeroes over [offset, +length) (write-zeroes where nothing faster exists), inside a
    /// range the caller registered with <see cref="BeginOtherAsync"/>: registering again would wait
    /// for the caller's own registration.
    /// </summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var zeroes = ZeroBuffer.Memory;
        while (length > 0)
        {
            var chunk = (int)Math.Min(length, zeroes.Length);
            await WriteUntrackedAsync(offset, zeroes[..chunk], cancellationToken).ConfigureAwait(false);
            offset += chunk;
            length -= chunk;
        }
    }

    /// <summary>
    /// Registers an operation that changes [offset, +length) without passing through
    /// <see cref="WriteAsync"/> (fallocate, an ioctl, copy_file_range, zero buffers): serialising
    /// when it is not aligned (it may end in a read-modify-write, or zero part of a block in
    /// place), so no write of the same blocks runs across it. End it with <see cref="EndOther"/>.
    /// </summary>
    public ValueTask<TrackedWrite> BeginOtherAsync(long offset, long length) =>
        _writes.BeginAsync(AlignDown(offset), AlignUp(offset + length), serialising: !IsAligned(offset, length));

    public void EndOther(TrackedWrite write) => _writes.End(write);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteUntrackedAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (IsAligned(offset, data.Length))
        {
            using var pin = data.Pin();
            if (IsAddressAligned(pin))
            {
                await WriteAlignedAsync(offset, data, cancellationToken).ConfigureAwait(false);
                return;
            }
        }
        Interlocked.Increment(ref _bounced);
        var end = offset + data.Length;
        for (var position = offset; position < end;)
            position = await WritePieceAsync(position, data[(int)(position - offset)..], cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// One bounce buffer's worth of a write starting at <paramref name="position"/>, widened to
    /// whole blocks; the partial head and tail blocks are read first. Returns where the piece ended.
    /// </summary>
    private async ValueTask<long> WritePieceAsync(long position, ReadOnlyMemory<byte> rest, CancellationToken cancellationToken)
    {
        var spanStart = AlignDown(position);
        var pieceEnd = Math.Min(position + rest.Length, spanStart + AlignedBufferPool.MaxLength);
        var spanEnd = AlignUp(pieceEnd);
        var length = (int)(spanEnd - spanStart);
        var block = (int)_request;
        var bounce = AlignedBufferPool.Rent(length);
        try
        {
            var span = bounce.Memory[..length];
            if (position != spanStart)
                await ReadAlignedAsync(spanStart, span[..block], cancellationToken).ConfigureAwait(false);
            // The tail block, unless it is the head block and was just read.
            if (pieceEnd != spanEnd && (position == spanStart || spanEnd - block != spanStart))
                await ReadAlignedAsync(spanEnd - block, span[(length - block)..], cancellationToken).ConfigureAwait(false);
            rest.Span[..(int)(pieceEnd - position)].CopyTo(span.Span[(int)(position - spanStart)..]);
            await WriteAlignedAsync(spanStart, span, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            AlignedBufferPool.Return(bounce);
        }
        return pieceEnd;
    }

    /// <summary>
    /// An aligned read. A read that ends early ends at the end of the file: that is zeroes, as a
    /// hole is (PaddedRead's rule); one ending mid-block cannot be continued with O_DIRECT anyway.
    /// </summary>
    private async ValueTask ReadAlignedAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, cancellationToken).ConfigureAwait(false);
            done += n;
            if (n == 0 || (done & (_request - 1)) != 0)
            {
                buffer.Span[done..].Clear();
                return;
            }
        }
    }

    private async ValueTask WriteAlignedAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await RandomAccess.WriteAsync(_handle, data, offset, cancellationToken).ConfigureAwait(false);
        // Only a write of the file's partial last block reaches past its size: a whole block had
        // to be written, and the file must keep the size its image has.
        if (_fileSize is { } size && offset + data.Length > size)
            RandomAccess.SetLength(_handle, size);
    }

    private unsafe bool IsAddressAligned(in System.Buffers.MemoryHandle pin) => ((nuint)pin.Pointer & (nuint)(_memory - 1)) == 0;

    private long AlignDown(long value) => value & ~(_request - 1);

    private long AlignUp(long value) => (value + _request - 1) & ~(_request - 1);

    public override string ToString() => $"{_location} (O_DIRECT, {_request}-byte requests)";
}
