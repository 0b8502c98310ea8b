using System.IO.Compression;

namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// Inflates one compressed cluster (QEMU's qcow2_decompress / qcow2_zstd_decompress): the stored bytes
/// are a bound, not an exact length (the descriptor counts 512-byte sectors, and the last one may hold
/// the start of the next cluster's data), so decompression stops once the cluster is full.
/// </summary>
internal static class Qcow2Decompressor
{
    /// <summary>Fills <paramref name="cluster"/> from <paramref name="compressed"/>; false when the data does not yield a whole cluster.</summary>
    public static bool TryDecompress(byte compressionType, byte[] compressed, int compressedLength, Span<byte> cluster) =>
        compressionType == Qcow2Format.CompressionZstd
            ? TryZstd(compressed.AsSpan(0, compressedLength), cluster)
            : TryDeflate(compressed, compressedLength, cluster);

    private static bool TryDeflate(byte[] compressed, int compressedLength, Span<byte> cluster)
    {
        // Raw deflate (QEMU writes a -12 window with no zlib header; DeflateStream reads any raw window).
        try
        {
            using var input = new MemoryStream(compressed, 0, compressedLength, writable: false);
            using var inflater = new DeflateStream(input, CompressionMode.Decompress);
            var done = 0;
            while (done < cluster.Length)
            {
                var n = inflater.Read(cluster[done..]);
                if (n == 0)
                    return false;
                done += n;
            }
            return true;
        }
        catch (InvalidDataException)
        {
            return false;
        }
    }

    private static unsafe bool TryZstd(ReadOnlySpan<byte> compressed, Span<byte> cluster)
    {
        var dctx = LibZstd.CreateDCtx();
        if (dctx == 0)
            return false;
        try
        {
            fixed (byte* src = compressed)
            fixed (byte* dst = cluster)
            {
                var input = new LibZstd.InBuffer { Src = src, Size = (nuint)compressed.Length };
                var output = new LibZstd.OutBuffer { Dst = dst, Size = (nuint)cluster.Length };
                // The input may hold several frames; go on until the cluster is full, and stop if a call
                // makes no progress (as QEMU does, so trailing garbage cannot loop forever).
                while (output.Pos < output.Size)
                {
                    var before = input.Pos + output.Pos;
                    var ret = LibZstd.DecompressStream(dctx, &output, &input);
                    if (LibZstd.IsError(ret) != 0 || input.Pos + output.Pos == before)
                        return false;
                }
                return true;
            }
        }
        finally
        {
            LibZstd.FreeDCtx(dctx);
        }
    }
}
