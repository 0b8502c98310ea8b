using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.State;

/// <summary>
/// The durable record of a job: queryable columns plus the full <see cref="Snapshot"/> (every
/// field API.md's "Job" shows, JSON-serializable). <see cref="Uid"/> is unique per job run, so a
/// host can keep the history row of a dismissed job when its id is reused.
/// </summary>
public sealed record JobRecord(
    Guid Uid,
    string Id,
    string Type,
    string Status,
    string Device,
    string? Target,
    string? Error,
    bool Dismissed,
    JobInfo Snapshot,
    DateTime CreatedAt,
    DateTime UpdatedAt,
    DateTime? FinishedAt);
