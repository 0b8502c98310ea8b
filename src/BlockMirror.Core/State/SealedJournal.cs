namespace BlockMirror.Core.State;

/// <summary>The entries of the sealed segments, all at most <see cref="Through"/>.</summary>
public sealed record SealedJournal(IReadOnlyList<JournalEntry> Entries, long Through);
