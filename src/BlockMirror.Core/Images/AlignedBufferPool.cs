using System.Collections.Concurrent;
using System.Numerics;

namespace BlockMirror.Core.Images;

/// <summary>
/// The bounce buffers of O_DIRECT images (QEMU's qemu_blockalign + its buffer reuse): page-aligned
/// native buffers in power-of-two sizes from 4 KiB to <see cref="MaxLength"/>, kept for reuse so a
/// request allocates nothing once the pool is warm. Each size keeps at most 16 MiB (and at least
/// four buffers); a return beyond that frees the buffer. Shared by every direct image in the process.
/// </summary>
internal static class AlignedBufferPool
{
    /// <summary>The largest buffer: a direct request larger than this is done in pieces of this size.</summary>
    internal const int MaxLength = 4 << 20;

    private const int MinShift = 12; // 4 KiB
    private const int MaxShift = 22; // 4 MiB
    private const int BytesKeptPerSize = 16 << 20;

    private static readonly ConcurrentBag<AlignedBuffer>[] s_sizes = CreateSizes();
    private static readonly int[] s_kept = new int[MaxShift - MinShift + 1];

    /// <summary>A buffer of at least <paramref name="length"/> bytes (at most <see cref="MaxLength"/>).</summary>
    public static AlignedBuffer Rent(int length)
    {
        var index = IndexOf(length);
        if (s_sizes[index].TryTake(out var buffer))
        {
            Interlocked.Decrement(ref s_kept[index]);
            return buffer;
        }
        return new AlignedBuffer(1 << (index + MinShift));
    }

    /// <summary>Gives <paramref name="buffer"/> back; the caller no longer touches it.</summary>
    public static void Return(AlignedBuffer buffer)
    {
        var index = IndexOf(buffer.Length);
        var limit = Math.Max(4, BytesKeptPerSize / buffer.Length);
        if (Interlocked.Increment(ref s_kept[index]) <= limit)
        {
            s_sizes[index].Add(buffer);
            return;
        }
        Interlocked.Decrement(ref s_kept[index]);
        ((IDisposable)buffer).Dispose();
    }

    private static int IndexOf(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxLength);
        var shift = Math.Max(MinShift, 32 - BitOperations.LeadingZeroCount((uint)length - 1));
        return shift - MinShift;
    }

    private static ConcurrentBag<AlignedBuffer>[] CreateSizes()
    {
        var sizes = new ConcurrentBag<AlignedBuffer>[MaxShift - MinShift + 1];
        for (var i = 0; i < sizes.Length; i++)
            sizes[i] = [];
        return sizes;
    }
}
