using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// A positional read of a whole buffer from an image's descriptor. A read that ends early (a file
/// truncated behind our back, a device shrunk while open) reads as zeroes past that point, as QEMU
/// pads a short read: like a hole, never an error.
/// </summary>
internal static class PaddedRead
{
    // Pooled builder: the state machine box is reused, so a read allocates nothing of ours.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public static async ValueTask ReadAsync(SafeFileHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var n = await RandomAccess.ReadAsync(handle, buffer[done..], offset + done, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                buffer.Span[done..].Clear();
                return;
            }
            done += n;
        }
    }
}
