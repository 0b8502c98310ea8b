using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// An image's open descriptor closed once, with its fstat kept from the moment of the close: a clean
/// stop checkpoints after closing, and the stamp it writes must still describe the file (or device
/// node) that was open, never whatever the path names by then.
/// </summary>
internal sealed class ClosingStat(SafeFileHandle handle)
{
    private int _closed;
    private StatBuffer? _closedStat;

    /// <summary>Closes the descriptor (dropping its OFD locks and any exclusive claim) after taking its fstat; only the first call does.</summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
            return;
        _closedStat = FStat();
        handle.Dispose();
    }

    /// <summary>fstat of the open descriptor, or (once closed) as it was when it was closed; null when that failed.</summary>
    public StatBuffer? TryStat()
    {
        if (Volatile.Read(ref _closed) != 0)
            return _closedStat;
        return FStat() ?? (Volatile.Read(ref _closed) != 0 ? _closedStat : null);
    }

    private StatBuffer? FStat()
    {
        try
        {
            using var lease = new FileDescriptorLease(handle);
            return LibC.fstat(lease.Fd, out var st) == 0 ? st : null;
        }
        catch (ObjectDisposedException)
        {
            return null;
        }
    }
}
