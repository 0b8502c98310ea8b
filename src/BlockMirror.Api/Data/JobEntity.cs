namespace BlockMirror.Api.Data;

/// <summary>Row of table <c>jobs</c>: the job's last known state as a JSON snapshot plus queryable columns.</summary>
public sealed class JobEntity
{
    /// <summary>Unique per job run: a dismissed job's id may be reused, its history row stays.</summary>
    public Guid Uid { get; set; }
    public required string Id { get; set; }
    public required string Type { get; set; }
    public required string Status { get; set; }
    public required string Device { get; set; }
    public string? Target { get; set; }
    public string? Error { get; set; }
    /// <summary>completed, cancelled or failed once concluded (null before): the history's filter column.</summary>
    public string? Outcome { get; set; }
    public bool Dismissed { get; set; }
    public required string Snapshot { get; set; }
    public DateTime CreatedAt { get; set; }
    public DateTime UpdatedAt { get; set; }
    public DateTime? FinishedAt { get; set; }
}
