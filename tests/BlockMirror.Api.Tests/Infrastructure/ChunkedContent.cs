using System.Net;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// A request body without a Content-Length (sent with chunked transfer encoding), written in
/// pieces of <paramref name="piece"/> bytes, as `curl -T -` or a streaming client sends it.
/// </summary>
public sealed class ChunkedContent(byte[] data, int piece = 256 << 10) : HttpContent
{
    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
    {
        for (var at = 0; at < data.Length; at += piece)
        {
            await stream.WriteAsync(data.AsMemory(at, Math.Min(piece, data.Length - at)));
            await stream.FlushAsync();
        }
    }

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }
}
