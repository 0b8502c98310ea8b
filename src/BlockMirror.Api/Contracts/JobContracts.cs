using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/jobs/mirror (QEMU's blockdev-mirror).</summary>
public sealed record MirrorJobRequest(
    string? Id,
    string? Device,
    string? Target,
    MirrorSyncMode? Sync,
    string? Bitmap,
    BitmapMode? BitmapMode,
    long? Granularity,
    long? BufSize,
    long? Speed,
    MirrorCopyMode? CopyMode,
    BlockdevOnError? OnSourceError,
    BlockdevOnError? OnTargetError,
    bool? AutoFinalize,
    bool? AutoDismiss,
    bool? Unmap);
