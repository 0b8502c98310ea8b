namespace BlockMirror.Core.Jobs;

/// <summary>
/// The copy mode: what the caller asked for (background, write-blocking or auto), what writes do
/// now (background or write-blocking), and the switch between them, by a PATCH (QEMU's
/// block-job-change) or by copy mode auto once the background copy stops converging.
/// </summary>
public sealed partial class MirrorJob
{
    /// <summary>How long copy mode auto lets the remaining bytes fail to shrink before it switches.</summary>
    public static readonly TimeSpan DefaultAutoCopyModeWindow = TimeSpan.FromSeconds(5);

    /// <summary>The event of every switch to write-blocking while the job runs (auto's or a PATCH's), with why.</summary>
    public const string CopyModeSwitchedEvent = "BLOCK_JOB_COPY_MODE_SWITCHED";

    /// <summary>Why a switch happened: copy mode auto saw the copy fall behind.</summary>
    public const string SwitchNotConverging = "not-converging";

    /// <summary>Why a switch happened: a PATCH asked for write-blocking.</summary>
    public const string SwitchRequested = "requested";

    // Guarded by StateLock (verbs change them, snapshots read them); the effective mode is _copyMode.
    private MirrorCopyMode _requestedCopyMode;
    private DateTime? _copyModeSwitchedAt;
    // Bytes writes newly dirtied since the start (the watch's evidence that writes go on).
    private long _bytesDirtied;
    // The copy loop's alone.
    private ConvergenceWatch? _watch;

    /// <summary>The copy mode as asked for at the start or by the last PATCH: background, write-blocking or auto.</summary>
    public MirrorCopyMode RequestedCopyMode
    {
        get
        {
            lock (StateLock)
                return _requestedCopyMode;
        }
    }

    /// <summary>When writes became write-blocking while the job ran (auto's switch or a PATCH); null if they never switched.</summary>
    public DateTime? CopyModeSwitchedAt
    {
        get
        {
            lock (StateLock)
                return _copyModeSwitchedAt;
        }
    }

    /// <summary>Copy mode auto's window (the host's <c>Jobs:AutoCopyModeWindow</c>).</summary>
    internal TimeSpan AutoCopyModeWindow { get; init; } = DefaultAutoCopyModeWindow;

    /// <summary>What writes do at the start: auto starts in background.</summary>
    private static MirrorCopyMode InitialEffectiveMode(MirrorCopyMode requested) =>
        requested == MirrorCopyMode.WriteBlocking ? MirrorCopyMode.WriteBlocking : MirrorCopyMode.Background;

    /// <summary>
    /// mirror_change, extended by auto. Writes never go back from write-blocking (QEMU allows only
    /// background → write-blocking); auto is a background job that may still switch, so it can be
    /// switched now (write-blocking) or told not to (background), and a background job can be
    /// given auto. Every other change is refused with QEMU's sentences.
    /// </summary>
    private void ChangeCopyModeStateLocked(MirrorCopyMode copyMode)
    {
        switch (copyMode)
        {
            case MirrorCopyMode.WriteBlocking:
                if (CopyMode != MirrorCopyMode.Background)
                    throw ExpectedBackground(CopyMode);
                _requestedCopyMode = MirrorCopyMode.WriteBlocking;
                SwitchToWriteBlockingStateLocked(SwitchRequested, null);
                break;
            case MirrorCopyMode.Auto:
                if (_requestedCopyMode != MirrorCopyMode.Background)
                    throw ExpectedBackground(_requestedCopyMode);
                _requestedCopyMode = MirrorCopyMode.Auto;
                break;
            default:
                if (_requestedCopyMode != MirrorCopyMode.Auto || CopyMode != MirrorCopyMode.Background)
                    throw BlockErrors.Conflict("copy-mode-change", $"Change to copy mode '{JobNames.Of(copyMode)}' is not implemented");
                _requestedCopyMode = MirrorCopyMode.Background;
                break;
        }
    }

    private static BlockException ExpectedBackground(MirrorCopyMode current) =>
        BlockErrors.Conflict("copy-mode-change", $"Expected current copy mode 'background', got '{JobNames.Of(current)}'");

    /// <summary>
    /// From now on writes complete on both nodes (the filter reads the mode on every write); the
    /// switch is stamped and announced with the rates that explain it. Events go out under the state
    /// lock, so the switch comes in order with the job's transitions.
    /// </summary>
    private void SwitchToWriteBlockingStateLocked(string reason, ConvergenceStall? stall)
    {
        Interlocked.Exchange(ref _copyMode, (int)MirrorCopyMode.WriteBlocking);
        _copyModeSwitchedAt = Host.Time.GetUtcNow().UtcDateTime;
        var (len, offset) = EventProgress();
        var remaining = len - offset;
        var copyRate = _copyRate.Rate();
        var dirtyRate = _dirtyRate.Rate();
        object data = stall is { } s
            ? new
            {
                type = Type, id = Id, copyMode = JobNames.Of(MirrorCopyMode.WriteBlocking), reason, len, offset, remaining,
                copyRate, dirtyRate, windowSeconds = Math.Round(s.Length.TotalSeconds, 3), remainingAtWindowStart = s.RemainingAtStart,
                dirtiedInWindow = s.Dirtied,
            }
            : new { type = Type, id = Id, copyMode = JobNames.Of(MirrorCopyMode.WriteBlocking), reason, len, offset, remaining, copyRate, dirtyRate };
        Host.Events.Publish(CopyModeSwitchedEvent, data);
    }

    /// <summary>
    /// One look per pass of the copy loop, for copy mode auto while writes are still background and
    /// the job was never ready: once a whole window went by without the remaining bytes shrinking
    /// while writes went on, switch to write-blocking, as a PATCH would. A pause restarts the window
    /// (<see cref="RestartConvergenceWatch"/>).
    /// </summary>
    /// <remarks>
    /// Auto's promise is to reach ready, which needs the remaining bytes at zero once: before that,
    /// a backlog that only hovers means it never gets there. Once ready, a backlog that hovers
    /// above zero under a steady writer is a job keeping up (complete drains it with writes held),
    /// and "not shrinking" there would be noise, so the watch ends. Nothing is watched once
    /// complete or cancel was asked for either (the final convergence holds writes anyway).
    /// </remarks>
    private void WatchConvergence()
    {
        if (!WatchesConvergence())
        {
            _watch?.Restart();
            return;
        }
        // Less than one chunk's worth of shrinking is the noise of chunks landing, not progress.
        _watch ??= new ConvergenceWatch(AutoCopyModeWindow, ChunkMax);
        var remaining = _working.Count + Interlocked.Read(ref _inFlightBytes);
        // GetElapsedTime(0) is the steady clock itself, as a TimeSpan.
        if (_watch.Observe(Host.Time.GetElapsedTime(0), remaining, Interlocked.Read(ref _bytesDirtied)) is not { } stall)
            return;
        lock (StateLock)
        {
            // A PATCH may have changed the mode since the look above.
            if (!WatchesConvergence())
                return;
            SwitchToWriteBlockingStateLocked(SwitchNotConverging, stall);
        }
        Touch();
        Save();
    }

    private bool WatchesConvergence()
    {
        lock (StateLock)
            return _requestedCopyMode == MirrorCopyMode.Auto && CopyMode == MirrorCopyMode.Background
                && !_ready && !_completeRequested && !CancelRequested && !Paused;
    }

    /// <summary>A pause (by the user or an error policy) starts a new window when the job copies again.</summary>
    private void RestartConvergenceWatch() => _watch?.Restart();

    /// <summary>Counts bytes writes newly dirtied (the filter calls it with the dirty rate's count).</summary>
    private void CountDirtied(long bytes) => Interlocked.Add(ref _bytesDirtied, bytes);
}
