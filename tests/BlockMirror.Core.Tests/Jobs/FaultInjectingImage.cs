using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// Wraps an image and fails chosen reads, writes or discards with an <see cref="IOException"/>
/// carrying an errno (EIO by default, ENOSPC on request), like blkdebug; a failing write can first
/// apply the start of its range (a short write on a full file system). Counts operations and
/// reports every completed write so tests can wait on progress instead of sleeping.
/// </summary>
public sealed class FaultInjectingImage(IBlockImage inner) : IBlockImage
{
    private const int EIO = 5;
    private const int ENOSPC = 28;

    private int _reads;
    private int _writes;
    private int _discards;

    /// <summary>Decides from the 1-based read number (counted since <see cref="Arm"/>) whether it fails.</summary>
    public Func<int, bool>? FailRead { get; set; }

    /// <summary>Decides from the 1-based write number (data and zero writes) whether it fails.</summary>
    public Func<int, bool>? FailWrite { get; set; }

    /// <summary>Decides from the 1-based discard number whether it fails.</summary>
    public Func<int, bool>? FailDiscard { get; set; }

    /// <summary>Failed writes report ENOSPC instead of EIO.</summary>
    public bool NoSpace { get; set; }

    /// <summary>
    /// A failing write, zero write or discard first applies this many bytes at the start of its
    /// range (capped at its length), then fails: the image changed although the request failed.
    /// </summary>
    public long AppliedBeforeFailure { get; set; }

    /// <summary>Called after each successful write (data or zeroes) with offset and length.</summary>
    public Action<long, long>? Written { get; set; }

    public int Reads => Volatile.Read(ref _reads);

    public int Writes => Volatile.Read(ref _writes);

    public IBlockImage Inner => inner;

    public long Size => inner.Size;
    public bool ReadOnly => inner.ReadOnly;
    public string Location => inner.Location;
    public long AllocatedBytes => inner.AllocatedBytes;
    public bool HasZeroInit => inner.HasZeroInit;

    /// <summary>Restarts the counters (the next read or write is number 1).</summary>
    public void Arm(Func<int, bool>? failRead = null, Func<int, bool>? failWrite = null)
    {
        Interlocked.Exchange(ref _reads, 0);
        Interlocked.Exchange(ref _writes, 0);
        Interlocked.Exchange(ref _discards, 0);
        FailRead = failRead;
        FailWrite = failWrite;
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var n = Interlocked.Increment(ref _reads);
        if (FailRead?.Invoke(n) == true)
            return ValueTask.FromException(Fault(EIO));
        return inner.ReadAsync(offset, buffer, cancellationToken);
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        if (Fails(ref _writes, FailWrite))
        {
            await inner.WriteAsync(offset, data[..(int)Partial(data.Length)], fua, cancellationToken).ConfigureAwait(false);
            throw Fault();
        }
        await inner.WriteAsync(offset, data, fua, cancellationToken).ConfigureAwait(false);
        Written?.Invoke(offset, data.Length);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        if (Fails(ref _writes, FailWrite))
        {
            await inner.WriteZeroesAsync(offset, Partial(length), mayUnmap, cancellationToken).ConfigureAwait(false);
            throw Fault();
        }
        await inner.WriteZeroesAsync(offset, length, mayUnmap, cancellationToken).ConfigureAwait(false);
        Written?.Invoke(offset, length);
    }

    public async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (Fails(ref _discards, FailDiscard))
        {
            await inner.DiscardAsync(offset, Partial(length), cancellationToken).ConfigureAwait(false);
            throw Fault();
        }
        await inner.DiscardAsync(offset, length, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

    public ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default) =>
        inner.GetBlockStatusAsync(offset, maxLength, cancellationToken);

    public ValueTask DisposeAsync() => inner.DisposeAsync();

    private static bool Fails(ref int counter, Func<int, bool>? decide)
    {
        var n = Interlocked.Increment(ref counter);
        return decide?.Invoke(n) == true;
    }

    private long Partial(long length) => Math.Clamp(AppliedBeforeFailure, 0, length);

    private IOException Fault() => Fault(NoSpace ? ENOSPC : EIO);

    private static IOException Fault(int errno) =>
        new(errno == ENOSPC ? "No space left on device" : "Input/output error", errno);
}
