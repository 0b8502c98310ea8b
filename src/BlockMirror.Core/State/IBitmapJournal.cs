namespace BlockMirror.Core.State;

/// <summary>
/// The write-ahead journal of persistent bitmaps. A range of granules that may become dirty in a
/// persistent bitmap is appended here, and is durable, before the write that dirties it reaches the
/// image; so after a kill -9 a bitmap's content is its last stored checkpoint plus every entry after
/// it, and no granule the image may differ in (an acknowledged write's, or one applied but never
/// acknowledged) is missing.
/// </summary>
/// <remarks>
/// Entries only ever set bits, so they are idempotent: replaying one twice, or one a checkpoint
/// already holds, is harmless. Each has a <see cref="JournalEntry.Sequence"/>, strictly increasing
/// across restarts; a checkpoint records the last sequence it covers (<see cref="BitmapRecord.JournalSequence"/>)
/// so that only later entries are replayed on top of it (an older entry would resurrect bits a clear removed).
/// </remarks>
public interface IBitmapJournal : IAsyncDisposable
{
    /// <summary>Highest sequence assigned so far, durable or not.</summary>
    /// <remarks>
    /// Read with the node's writes quiesced just before a checkpoint takes its snapshot: every entry
    /// of that bitmap up to it belongs to a write whose marks are in the snapshot, every later one is replayed.
    /// </remarks>
    long LastSequence { get; }

    /// <summary>Appends, group commits, and flushes; for benchmarks and tests.</summary>
    JournalStatistics Statistics { get; }

    /// <summary>Raised, on a thread-pool thread, when a segment filled up: its entries can be folded into the checkpoints.</summary>
    event Action? SegmentSealed;

    /// <summary>Why appends fail (the journal could not be written), or null while it works.</summary>
    Exception? Failure { get; }

    /// <summary>Raised, on a thread-pool thread, when appends start failing (<see cref="Failure"/> set): the owner repairs with <see cref="RestartAsync"/>.</summary>
    event Action? WriteFailed;

    /// <summary>
    /// Reads what earlier runs left (every entry of the valid prefix of every segment, and the last
    /// sign of life). Called once, before <see cref="StartAsync"/>; changes nothing.
    /// </summary>
    Task<JournalRecovery> RecoverAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Starts this run: the caller has folded every recovered entry into the stored checkpoints, so
    /// the old segments are dropped; new entries get sequences from <paramref name="nextSequence"/>.
    /// </summary>
    Task StartAsync(long nextSequence, CancellationToken cancellationToken = default);

    /// <summary>
    /// Appends "granules [first, first+count) of <paramref name="bitmap"/> on <paramref name="node"/>
    /// may be dirty" and completes once it is durable. Concurrent appends share one flush.
    /// Fails with a <see cref="BitmapJournalException"/> when the journal cannot be written (then every
    /// later append fails too, until <see cref="RestartAsync"/>).
    /// </summary>
    ValueTask AppendAsync(string node, string bitmap, long firstGranule, long granuleCount);

    /// <summary>
    /// Appends <paramref name="entries"/> (their sequences are assigned here, consecutive and in list
    /// order, so no other append falls between them) and completes once the last is durable: the
    /// activity log's records (<see cref="JournalEntryKind"/>). Fails as <see cref="AppendAsync(string, string, long, long)"/> does.
    /// </summary>
    ValueTask AppendAsync(IReadOnlyList<JournalEntry> entries);

    /// <summary>
    /// Repairs a failed journal (no-op when it works): the caller has checkpointed every persistent
    /// bitmap through <paramref name="nextSequence"/> - 1 with every node's writes quiesced, so every
    /// segment is dropped and new entries start at <paramref name="nextSequence"/> in a fresh one, as
    /// after <see cref="StartAsync"/>. Fails, and the journal stays failed, while it still cannot be written.
    /// </summary>
    Task RestartAsync(long nextSequence, CancellationToken cancellationToken = default);

    /// <summary>The entries of the sealed segments, or null when there is none.</summary>
    Task<SealedJournal?> ReadSealedAsync(CancellationToken cancellationToken = default);

    /// <summary>Drops the sealed segments whose entries are all at most <paramref name="through"/> (folded into checkpoints).</summary>
    Task ReleaseSealedAsync(long through, CancellationToken cancellationToken = default);
}
