using System.Text.Json.Serialization;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Data;

/// <summary>
/// The JSON of a job's snapshot in the <c>Jobs.Snapshot</c> column: a format of the database, kept
/// apart from Core's <see cref="JobInfo"/> (the block layer's snapshot) and from the API's
/// <c>JobDto</c>, so a change to either never changes what stored rows mean. Every member is named
/// here as it is on disk; members added later are nullable, so older rows still read.
/// </summary>
internal sealed class StoredJobSnapshot
{
    [JsonPropertyName("id")] public required string Id { get; init; }
    [JsonPropertyName("type")] public required string Type { get; init; }
    [JsonPropertyName("status")] public required string Status { get; init; }
    [JsonPropertyName("device")] public required string Device { get; init; }
    [JsonPropertyName("target")] public string? Target { get; init; }
    [JsonPropertyName("sync")] public string? Sync { get; init; }
    [JsonPropertyName("bitmap")] public string? Bitmap { get; init; }
    [JsonPropertyName("bitmapMode")] public string? BitmapMode { get; init; }
    [JsonPropertyName("copyMode")] public string? CopyMode { get; init; }
    [JsonPropertyName("granularity")] public long Granularity { get; init; }
    [JsonPropertyName("bufSize")] public long BufSize { get; init; }
    [JsonPropertyName("speed")] public long Speed { get; init; }
    [JsonPropertyName("currentProgress")] public long CurrentProgress { get; init; }
    [JsonPropertyName("totalProgress")] public long TotalProgress { get; init; }
    [JsonPropertyName("remaining")] public long Remaining { get; init; }
    [JsonPropertyName("bytesCopied")] public long BytesCopied { get; init; }
    [JsonPropertyName("copyRate")] public long CopyRate { get; init; }
    [JsonPropertyName("dirtyRate")] public long DirtyRate { get; init; }
    [JsonPropertyName("etaSeconds")] public long? EtaSeconds { get; init; }
    [JsonPropertyName("ready")] public bool Ready { get; init; }
    [JsonPropertyName("paused")] public bool Paused { get; init; }
    [JsonPropertyName("activelySynced")] public bool ActivelySynced { get; init; }
    [JsonPropertyName("ioStatus")] public required string IoStatus { get; init; }
    [JsonPropertyName("error")] public string? Error { get; init; }
    [JsonPropertyName("autoFinalize")] public bool AutoFinalize { get; init; }
    [JsonPropertyName("autoDismiss")] public bool AutoDismiss { get; init; }
    [JsonPropertyName("createdAt")] public DateTime CreatedAt { get; init; }
    [JsonPropertyName("updatedAt")] public DateTime UpdatedAt { get; init; }
    [JsonPropertyName("finishedAt")] public DateTime? FinishedAt { get; init; }
    [JsonPropertyName("outcome")] public string? Outcome { get; init; }
    [JsonPropertyName("cancelMode")] public string? CancelMode { get; init; }
    [JsonPropertyName("readyAt")] public DateTime? ReadyAt { get; init; }

    public static StoredJobSnapshot From(JobInfo i) => new()
    {
        Id = i.Id, Type = i.Type, Status = i.Status, Device = i.Device, Target = i.Target, Sync = i.Sync,
        Bitmap = i.Bitmap, BitmapMode = i.BitmapMode, CopyMode = i.CopyMode, Granularity = i.Granularity,
        BufSize = i.BufSize, Speed = i.Speed, CurrentProgress = i.CurrentProgress, TotalProgress = i.TotalProgress,
        Remaining = i.Remaining, BytesCopied = i.BytesCopied, CopyRate = i.CopyRate, DirtyRate = i.DirtyRate,
        EtaSeconds = i.EtaSeconds, Ready = i.Ready, Paused = i.Paused, ActivelySynced = i.ActivelySynced,
        IoStatus = i.IoStatus, Error = i.Error, AutoFinalize = i.AutoFinalize, AutoDismiss = i.AutoDismiss,
        CreatedAt = i.CreatedAt, UpdatedAt = i.UpdatedAt, FinishedAt = i.FinishedAt,
        Outcome = i.Outcome, CancelMode = i.CancelMode, ReadyAt = i.ReadyAt,
    };

    public JobInfo ToInfo() => new(
        Id, Type, Status, Device, Target, Sync, Bitmap, BitmapMode, CopyMode,
        Granularity, BufSize, Speed, CurrentProgress, TotalProgress, Remaining, BytesCopied, CopyRate, DirtyRate, EtaSeconds,
        Ready, Paused, ActivelySynced, IoStatus, Error, AutoFinalize, AutoDismiss, CreatedAt, UpdatedAt, FinishedAt,
        Outcome, CancelMode, ReadyAt);
}
