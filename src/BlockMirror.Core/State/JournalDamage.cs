namespace BlockMirror.Core.State;

/// <summary>
/// A part of the journal that was made durable but cannot be read back: the entries with sequences
/// in (<see cref="After"/>, <see cref="Through"/>] are missing or damaged, so a persistent bitmap whose
/// checkpoint covers less than <see cref="Through"/> cannot be proven exact.
/// </summary>
/// <param name="Description">What was found, for the bitmaps' inconsistent reason and the log.</param>
public sealed record JournalDamage(long After, long Through, string Description);
