using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Wraps an image whose writes never complete once <see cref="Stall"/> was called, like an NBD target
/// that stops answering (nbdkit's delay filter): they wait, ignoring cancellation as a dead peer
/// does, until <see cref="Release"/>. <see cref="Stalled"/> completes when the first write is held.
/// </summary>
public sealed class StallingImage(IBlockImage inner) : IBlockImage
{
    private readonly TaskCompletionSource _stalled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _stalling;

    /// <summary>Completes when a write is being held.</summary>
    public Task Stalled => _stalled.Task;

    public void Stall() => _stalling = true;

    /// <summary>Lets every held write (and later ones) through.</summary>
    public void Release()
    {
        _stalling = false;
        _released.TrySetResult();
    }

    public long Size => inner.Size;
    public bool ReadOnly => inner.ReadOnly;
    public string Location => inner.Location;
    public long AllocatedBytes => inner.AllocatedBytes;
    public bool HasZeroInit => inner.HasZeroInit;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.ReadAsync(offset, buffer, cancellationToken);

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        await HoldAsync().ConfigureAwait(false);
        await inner.WriteAsync(offset, data, fua, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        await HoldAsync().ConfigureAwait(false);
        await inner.WriteZeroesAsync(offset, length, mayUnmap, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        inner.DiscardAsync(offset, length, cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default) =>
        inner.GetBlockStatusAsync(offset, maxLength, cancellationToken);

    public ValueTask DisposeAsync() => inner.DisposeAsync();

    private async Task HoldAsync()
    {
        if (!_stalling)
            return;
        _stalled.TrySetResult();
        await _released.Task.ConfigureAwait(false);
    }
}
