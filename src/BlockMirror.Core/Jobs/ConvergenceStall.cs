namespace BlockMirror.Core.Jobs;

/// <summary>A window over which a mirror did not converge: its length, the remaining bytes at its start and end, the bytes writes dirtied in it.</summary>
internal readonly record struct ConvergenceStall(TimeSpan Length, long RemainingAtStart, long Remaining, long Dirtied);
