using System.Buffers.Binary;
using System.Numerics;

namespace BlockMirror.Core.State;

/// <summary>CRC-32C (Castagnoli) over a span, with the CPU's instruction where it has one (BitOperations.Crc32C).</summary>
internal static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data)
    {
        var crc = ~0u;
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (var b in data)
            crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }
}
