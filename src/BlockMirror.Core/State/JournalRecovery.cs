namespace BlockMirror.Core.State;

/// <summary>What a journal held at start.</summary>
/// <param name="Entries">Every valid entry, in sequence order.</param>
/// <param name="LastSequence">The highest sequence found (0 when none).</param>
/// <param name="WroteUntilUtc">
/// The latest instant at which the previous run may still have written an image: its last sign of
/// life plus the interval between signs and a margin; null when it left none. An image modified
/// later was modified by someone else.
/// </param>
public sealed record JournalRecovery(IReadOnlyList<JournalEntry> Entries, long LastSequence, DateTime? WroteUntilUtc)
{
    public static JournalRecovery Empty { get; } = new([], 0, null);

    /// <summary>
    /// Durable parts of the journal found missing or damaged (not a torn tail: a crash only tears
    /// what was never acknowledged), in sequence order; empty when the journal is whole.
    /// </summary>
    public IReadOnlyList<JournalDamage> Damage { get; init; } = [];

    /// <summary>The first damage a checkpoint covering up to <paramref name="covered"/> does not make harmless, or null.</summary>
    public JournalDamage? DamageAfter(long covered) => Damage.FirstOrDefault(d => d.Through > covered);
}
