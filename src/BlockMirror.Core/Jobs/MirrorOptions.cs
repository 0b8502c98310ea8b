namespace BlockMirror.Core.Jobs;

/// <summary>Everything POST /jobs/mirror accepts, after JSON binding (unvalidated).</summary>
public sealed record MirrorOptions
{
    public string? Id { get; init; }
    public required string Device { get; init; }
    public required string Target { get; init; }
    public MirrorSyncMode Sync { get; init; } = MirrorSyncMode.Full;
    public string? Bitmap { get; init; }
    public BitmapMode? BitmapMode { get; init; }
    public long? Granularity { get; init; }
    public long? BufSize { get; init; }
    public long Speed { get; init; }
    public MirrorCopyMode CopyMode { get; init; } = MirrorCopyMode.Background;
    public BlockdevOnError OnSourceError { get; init; } = BlockdevOnError.Report;
    public BlockdevOnError OnTargetError { get; init; } = BlockdevOnError.Report;
    public bool AutoFinalize { get; init; } = true;
    public bool AutoDismiss { get; init; } = true;
    public bool Unmap { get; init; } = true;
}
