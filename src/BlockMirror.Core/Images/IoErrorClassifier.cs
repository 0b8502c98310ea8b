namespace BlockMirror.Core.Images;

/// <summary>
/// Tells which I/O failures are "no space left on device", for the <c>enospc</c> error policy
/// (QEMU stops the job on ENOSPC, reports anything else).
/// </summary>
/// <remarks>
/// On Unix .NET reports a failed write (RandomAccess.Write/WriteAsync, FileStream) whose errno it
/// has no dedicated exception for as a plain <see cref="IOException"/> whose
/// <see cref="Exception.HResult"/> is the raw errno and whose message is strerror's text plus the
/// path: ENOSPC arrives as HResult 28, "No space left on device : '/path'". Verified on .NET 10,
/// Linux x64, by writing to a full 64 KiB tmpfs and to /dev/full (sync and async alike).
/// <see cref="RawFileImage"/> raises its own syscall failures (fallocate, fdatasync) the same way.
/// </remarks>
public static class IoErrorClassifier
{
    /// <summary>Linux's ENOSPC, which .NET puts in IOException.HResult unchanged.</summary>
    private const int ENOSPC = 28;

    /// <summary>True when <paramref name="e"/>, or an exception it wraps, is ENOSPC.</summary>
    public static bool IsNoSpace(Exception e)
    {
        ArgumentNullException.ThrowIfNull(e);
        return e switch
        {
            IOException io when io.HResult == ENOSPC => true,
            AggregateException agg => agg.InnerExceptions.Any(IsNoSpace),
            _ => e.InnerException is { } inner && IsNoSpace(inner),
        };
    }
}
