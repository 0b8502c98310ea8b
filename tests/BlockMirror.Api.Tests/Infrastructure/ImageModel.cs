namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>The expected content of an image: every write a test makes is applied here too.</summary>
public sealed class ImageModel(long size)
{
    public byte[] Bytes { get; } = new byte[size];

    public async Task WriteAsync(HttpClient http, string node, long offset, byte[] data)
    {
        await http.WriteAsync(node, offset, data);
        data.CopyTo(Bytes, offset);
    }

    /// <summary>Writes <paramref name="count"/> random ranges at unaligned offsets with unaligned sizes.</summary>
    public async Task RandomWritesAsync(HttpClient http, string node, Random random, int count, int maxLength = 200_000)
    {
        for (var i = 0; i < count; i++)
        {
            var length = random.Next(1, maxLength);
            var offset = random.NextInt64(0, Bytes.Length - length);
            var data = new byte[length];
            random.NextBytes(data);
            await WriteAsync(http, node, offset, data);
        }
    }

    public byte[] Snapshot() => (byte[])Bytes.Clone();
}
