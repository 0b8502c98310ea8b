namespace BlockMirror.Core.Jobs;

/// <summary>
/// A point-in-time snapshot of a job with every field of API.md's "Job" (enum values already in
/// their QEMU spellings), for the host's DTO and the store's JSON snapshot. <see cref="Outcome"/>
/// and <see cref="CancelMode"/> are set once the job concluded (<see cref="JobOutcome"/>,
/// <see cref="JobCancelMode"/>); <see cref="ReadyAt"/> when it first became ready. <see cref="CopyMode"/>
/// is the mode asked for (background, write-blocking, auto), <see cref="EffectiveCopyMode"/> what writes do
/// (background, write-blocking), <see cref="CopyModeSwitchedAt"/> when they became write-blocking while it ran. They come last,
/// with defaults, because snapshots stored before them have none.
/// </summary>
public sealed record JobInfo(
    string Id,
    string Type,
    string Status,
    string Device,
    string? Target,
    string? Sync,
    string? Bitmap,
    string? BitmapMode,
    string? CopyMode,
    long Granularity,
    long BufSize,
    long Speed,
    long CurrentProgress,
    long TotalProgress,
    long Remaining,
    long BytesCopied,
    long CopyRate,
    long DirtyRate,
    long? EtaSeconds,
    bool Ready,
    bool Paused,
    bool ActivelySynced,
    string IoStatus,
    string? Error,
    bool AutoFinalize,
    bool AutoDismiss,
    DateTime CreatedAt,
    DateTime UpdatedAt,
    DateTime? FinishedAt,
    string? Outcome = null,
    string? CancelMode = null,
    DateTime? ReadyAt = null,
    string? EffectiveCopyMode = null,
    DateTime? CopyModeSwitchedAt = null);
