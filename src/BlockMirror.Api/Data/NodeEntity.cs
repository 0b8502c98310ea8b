namespace BlockMirror.Api.Data;

/// <summary>Row of table <c>nodes</c>.</summary>
public sealed class NodeEntity
{
    public required string Name { get; set; }
    public required string Driver { get; set; }
    public string? Path { get; set; }
    public string? Uri { get; set; }
    public long Size { get; set; }
    public bool ReadOnly { get; set; }

    /// <summary>Opened with O_DIRECT (cache.direct); reopened the same way at the next start.</summary>
    public bool CacheDirect { get; set; }
    public DateTime CreatedAt { get; set; }
}
