namespace BlockMirror.Core.State;

/// <summary>Counters of a journal: entries appended, and the flushes (write + fdatasync) that made them durable.</summary>
public readonly record struct JournalStatistics(long Appends, long Flushes, long BytesWritten);
