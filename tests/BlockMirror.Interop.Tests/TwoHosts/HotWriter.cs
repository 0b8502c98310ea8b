using static BlockMirror.Interop.Tests.TwoHosts.HostApi;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// A writer on host A's <c>src</c> from its creation until <see cref="StopAsync"/>: 64 KiB of random
/// data after another, each at a random offset in a hot region of <see cref="Length"/> bytes past
/// the data (a guest's working set), so the bitmap stays much smaller than the disk.
/// </summary>
internal sealed class HotWriter
{
    public const long Offset = 64L << 20;
    public const long Length = 4L << 20;

    private readonly CancellationTokenSource _stop = new();
    private readonly Task _writes;
    private int _count;

    public HotWriter(NamespacedService a)
    {
        _writes = Task.Run(async () =>
        {
            var rng = new Random(17);
            var piece = new byte[64 << 10];
            while (!_stop.IsCancellationRequested)
            {
                rng.NextBytes(piece);
                await PutAsync(a.Http, "src", Offset + (rng.NextInt64(0, (Length - piece.Length) / 512) * 512), piece);
                Interlocked.Increment(ref _count);
            }
        });
    }

    /// <summary>Stops the writer once its current write has answered; every write it made is on A's image.</summary>
    public async Task StopAsync()
    {
        await _stop.CancelAsync();
        await _writes;
        _stop.Dispose();
        Assert.True(_count > 0, "the writer got no write in");
    }
}
