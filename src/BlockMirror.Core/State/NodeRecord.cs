namespace BlockMirror.Core.State;

/// <summary>The durable record of a node.</summary>
public sealed record NodeRecord(string Name, string Driver, string? Path, string? Uri, long Size, bool ReadOnly, DateTime CreatedAt);
