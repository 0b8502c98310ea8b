using BlockMirror.Core.Images;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// Random writes, overwrites, zero writes, discards and reads on an image, mirrored on a byte array
/// with QEMU's semantics (a discard clears whole clusters; in version 2 over a backing file they show
/// the backing again), every read compared with the array.
/// </summary>
internal sealed class Qcow2Workload(byte[] model, int clusterSize, int version, byte[]? backing)
{
    public byte[] Model => model;

    public static byte[] Pattern(Random rng, int length)
    {
        var bytes = new byte[length];
        rng.NextBytes(bytes);
        for (var i = 0; i < bytes.Length; i++)
            bytes[i] |= 1;
        return bytes;
    }

    /// <summary>A model with data, zeroes and untouched stretches (so qemu-img makes data, zero and unallocated clusters of it).</summary>
    public static byte[] MakeContent(Random rng, long size)
    {
        var content = new byte[size];
        for (long pos = 0; pos < size;)
        {
            var length = (int)Math.Min(size - pos, rng.Next(1, 64) * 4096L);
            if (rng.Next(3) == 0)
                Pattern(rng, length).CopyTo(content, pos);
            pos += length + (rng.Next(2) * rng.Next(1, 64) * 4096L);
        }
        return content;
    }

    public async Task RunAsync(IBlockImage image, Random rng, int steps)
    {
        var size = model.LongLength;
        for (var step = 0; step < steps; step++)
        {
            long offset = rng.Next(3) == 0 ? rng.NextInt64(size / clusterSize) * clusterSize : rng.NextInt64(size);
            long length = rng.Next(4) switch
            {
                0 => rng.Next(1, 600),
                1 => clusterSize,
                2 => rng.NextInt64(1, 3L * clusterSize),
                _ => rng.Next(1, 64) * 4096L,
            };
            length = Math.Clamp(length, 1, size - offset);
            switch (rng.Next(10))
            {
                case < 5:
                    var data = Pattern(rng, (int)length);
                    await image.WriteAsync(offset, data);
                    data.CopyTo(model, offset);
                    break;
                case 5:
                    await image.WriteZeroesAsync(offset, length, mayUnmap: rng.Next(2) == 0);
                    Array.Clear(model, (int)offset, (int)length);
                    break;
                case 6:
                    await image.DiscardAsync(offset, length);
                    var from = (offset + clusterSize - 1) / clusterSize * clusterSize;
                    var to = offset + length >= size ? size : (offset + length) / clusterSize * clusterSize;
                    for (var p = from; p < to; p++)
                        model[p] = version < 3 && backing is not null && p < backing.Length ? backing[p] : (byte)0;
                    break;
                default:
                    var back = new byte[length];
                    await image.ReadAsync(offset, back);
                    var mismatch = back.AsSpan().CommonPrefixLength(model.AsSpan((int)offset, (int)length));
                    Assert.True(mismatch == length, $"step {step}: read at {offset} +{length} differs at byte {offset + mismatch}");
                    break;
            }
        }
    }

    public static async Task AssertImageEqualsAsync(IBlockImage image, byte[] expected)
    {
        var all = new byte[image.Size];
        await image.ReadAsync(0, all);
        var mismatch = all.AsSpan().CommonPrefixLength(expected);
        Assert.True(mismatch == expected.Length, $"the image differs from the model at byte {mismatch}");
    }
}
