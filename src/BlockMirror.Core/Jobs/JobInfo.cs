namespace BlockMirror.Core.Jobs;

/// <summary>
/// A point-in-time snapshot of a job with every field of API.md's "Job" (enum values already in
/// their QEMU spellings), for the host's DTO and the store's JSON snapshot.
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
    DateTime? FinishedAt);
