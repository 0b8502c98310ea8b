namespace BlockMirror.Api.Data;

/// <summary>Row of table <c>events</c>: every published event with its monotonic id.</summary>
public sealed class EventEntity
{
    public long Id { get; set; }
    public required string Name { get; set; }
    public required string Data { get; set; }
    public DateTime Time { get; set; }
}
