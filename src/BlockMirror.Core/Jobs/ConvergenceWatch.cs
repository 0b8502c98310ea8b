namespace BlockMirror.Core.Jobs;

/// <summary>
/// Decides when copy mode auto gives up on the background copy: the remaining bytes (dirty plus in
/// flight) at the end of a whole window are no fewer than at its start, less one copy chunk
/// (<c>minShrink</c>), the job was never in sync during it, and writes dirtied something in it. Then the dirty rate is at or above the copy rate
/// and more background copying cannot converge (QEMU leaves this to the operator, who switches
/// with block-job-change; Proxmox does it when a migration's mirror does not converge).
/// </summary>
/// <remarks>
/// One sample at each end of the window, not the lowest value seen in it: the remaining count
/// jumps by a chunk each time one lands, and the lowest of many noisy samples would almost always
/// look like progress. For the same reason a window that shrank by no more than one chunk made no
/// progress: a copy that writes keep up with settles towards a backlog that never drains (random
/// writes re-dirty what was copied), and the last steps of that approach are smaller than the noise. A window without writes never stalls: the copy is only slow (a low
/// <c>speed</c>), and write-blocking would not make it faster. Not thread-safe: the copy loop
/// alone calls it.
/// </remarks>
internal sealed class ConvergenceWatch(TimeSpan window, long minShrink = 0)
{
    private bool _open;
    private TimeSpan _start;
    private long _remaining;
    private long _dirtied;

    public TimeSpan Window { get; } = window;

    /// <summary>Forgets the current window (a pause: time the job does not copy does not count).</summary>
    public void Restart() => _open = false;

    /// <summary>
    /// One look at the job: <paramref name="now"/> on any steady clock, <paramref name="remaining"/>
    /// bytes still to copy, <paramref name="dirtied"/> the running total of bytes writes newly
    /// dirtied. Returns the window that stalled, or null while the job still converges.
    /// </summary>
    public ConvergenceStall? Observe(TimeSpan now, long remaining, long dirtied)
    {
        if (!_open || remaining == 0)
        {
            // In sync right now: whatever the rates, the copy keeps up.
            Open(now, remaining, dirtied);
            return null;
        }
        var elapsed = now - _start;
        if (elapsed < Window)
            return null;
        var stall = new ConvergenceStall(elapsed, _remaining, remaining, dirtied - _dirtied);
        Open(now, remaining, dirtied);
        return stall.RemainingAtStart - remaining <= minShrink && stall.Dirtied > 0 ? stall : null;
    }

    private void Open(TimeSpan now, long remaining, long dirtied)
    {
        _open = true;
        _start = now;
        _remaining = remaining;
        _dirtied = dirtied;
    }
}
