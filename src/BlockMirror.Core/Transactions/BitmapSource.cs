namespace BlockMirror.Core.Transactions;

/// <summary>A merge source: a bitmap name, on <see cref="Node"/> or (when null) on the target's node.</summary>
public sealed record BitmapSource(string? Node, string Name);
