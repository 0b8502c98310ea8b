namespace BlockMirror.Core.State;

/// <summary>
/// Counters of the activity log across every persistent bitmap: extents hot now, activations (each a
/// journal write the writer waited for), evictions (an extent's marks written, no wait of their own)
/// and relogs (hot extents written again so a fold could drop their first activation).
/// </summary>
public readonly record struct ActivityLogStatistics(long HotExtents, long Activated, long Evicted, long Relogged);
