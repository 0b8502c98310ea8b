using System.Buffers;
using System.Runtime.InteropServices;

namespace BlockMirror.Core.Images;

/// <summary>
/// Native memory aligned to a page (<see cref="NativeMemory.AlignedAlloc"/>), for O_DIRECT I/O:
/// the kernel DMAs straight from or into it, so its address must meet the device's alignment,
/// which no managed array guarantees. Exposed as <see cref="Memory{T}"/> so
/// <see cref="RandomAccess"/> takes it; pinning is free (the memory never moves). Rented from and
/// returned to <see cref="AlignedBufferPool"/>, never freed while a renter holds it.
/// </summary>
internal sealed unsafe class AlignedBuffer : MemoryManager<byte>
{
    /// <summary>Every buffer starts on a page: above any logical block size a device reports (512, 4096).</summary>
    internal const int Alignment = 4096;

    private byte* _pointer;

    public AlignedBuffer(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        Length = length;
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)length, Alignment);
    }

    /// <summary>The buffer's capacity in bytes (a power of two from the pool).</summary>
    public int Length { get; }

    public override Span<byte> GetSpan() => new(_pointer, Length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
        // Native memory does not move.
    }

    protected override void Dispose(bool disposing)
    {
        if (_pointer is null)
            return;
        NativeMemory.AlignedFree(_pointer);
        _pointer = null;
    }
}
