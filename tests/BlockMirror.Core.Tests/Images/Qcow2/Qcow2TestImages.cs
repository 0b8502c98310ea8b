using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>Helpers to make and open qcow2 images in memory.</summary>
internal static class Qcow2TestImages
{
    public static MemoryQcow2File Create(Qcow2CreateOptions options)
    {
        var file = new MemoryQcow2File();
        Qcow2Creator.Validate(options, file.Path);
        Qcow2Creator.Format(file, options);
        file.Flush();
        return file;
    }

    public static Qcow2Image Open(MemoryQcow2File file, bool readOnly = false, IBlockImage? backing = null) =>
        Qcow2Image.OpenOn(file, readOnly, backing, file.Path);

    /// <summary>Random bytes with no zero byte, so "reads as zeroes" checks are sharp.</summary>
    public static byte[] Pattern(Random rng, int length)
    {
        var bytes = new byte[length];
        rng.NextBytes(bytes);
        for (var i = 0; i < bytes.Length; i++)
            bytes[i] |= 1;
        return bytes;
    }

    public static async Task<byte[]> ReadAllAsync(IBlockImage image)
    {
        var buffer = new byte[image.Size];
        Array.Fill(buffer, (byte)0xCC);
        await image.ReadAsync(0, buffer);
        return buffer;
    }
}
