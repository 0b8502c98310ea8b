using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using Xunit.Abstractions;

namespace BlockMirror.Core.Tests.State;

public sealed class FileBitmapJournalTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempImageDirectory _dir = new();

    /// <summary>The journal's path prefix: its files are journal.*.seg and journal.alive in the temp folder.</summary>
    private string JournalDir => _dir.PathOf("journal");

    public void Dispose() => _dir.Dispose();

    private async Task<FileBitmapJournal> StartAsync(long next = 1, FileBitmapJournalOptions? options = null)
    {
        var journal = new FileBitmapJournal(JournalDir, options);
        await journal.RecoverAsync();
        await journal.StartAsync(next);
        return journal;
    }

    private async Task<JournalRecovery> RecoverAsync()
    {
        await using var journal = new FileBitmapJournal(JournalDir);
        return await journal.RecoverAsync();
    }

    [Fact]
    public async Task Appended_entries_are_recovered_in_order_after_the_process_goes()
    {
        var journal = await StartAsync(next: 42);
        await journal.AppendAsync("disk0", "b0", 0, 1);
        await journal.AppendAsync("disk0", "b1", 7, 3);
        await journal.AppendAsync("other:node", "x.y-z_", long.MaxValue / 2, 1);
        Assert.Equal(44, journal.LastSequence);
        // No dispose: what the file holds once an append completed is what a kill -9 leaves.

        var recovery = await RecoverAsync();
        Assert.Equal(
            [new JournalEntry(42, "disk0", "b0", 0, 1), new JournalEntry(43, "disk0", "b1", 7, 3), new JournalEntry(44, "other:node", "x.y-z_", long.MaxValue / 2, 1)],
            recovery.Entries);
        Assert.Equal(44, recovery.LastSequence);
        await journal.DisposeAsync();
    }

    [Fact]
    public async Task Concurrent_appends_share_one_flush()
    {
        await using var journal = await StartAsync();
        const int writers = 1000;
        await Task.WhenAll(Enumerable.Range(0, writers).Select(i => Task.Run(async () => await journal.AppendAsync("disk0", "b0", i, 1))));
        var stats = journal.Statistics;
        output.WriteLine($"{writers} concurrent appends: {stats.Flushes} fdatasyncs");
        Assert.Equal(writers, stats.Appends);
        // One fdatasync per batch: the first append goes alone, the rest collect behind it.
        Assert.True(stats.Flushes <= writers / 10, $"{stats.Flushes} flushes for {writers} concurrent appends");
        Assert.Equal(writers, (await RecoverAsync()).Entries.Count);
    }

    [Fact]
    public async Task A_torn_tail_after_the_last_acknowledged_flush_is_not_damage()
    {
        var journal = await StartAsync();
        for (var i = 0; i < 5; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        // kill -9 while the next group commit was being written: its bytes are cut short, or garbage.
        var segment = Segments().Single();
        var length = new FileInfo(segment).Length;
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            f.Position = length;
            f.Write(ValidRecordBytes(6, length)[..17]);
        }
        var torn = await RecoverAsync();
        Assert.Equal([0L, 1, 2, 3, 4], torn.Entries.Select(e => e.FirstGranule));
        Assert.Empty(torn.Damage);

        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            f.Position = length;
            f.Write(Enumerable.Repeat((byte)0xA5, 100).ToArray());
        }
        Assert.Empty((await RecoverAsync()).Damage);
        await journal.DisposeAsync();
    }

    [Fact]
    public async Task A_cut_or_garbled_acknowledged_record_ends_the_valid_prefix_and_is_damage()
    {
        var journal = await StartAsync();
        for (var i = 0; i < 5; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        await journal.DisposeAsync();
        var segment = Segments().Single();
        var length = new FileInfo(segment).Length;
        // The last record, acknowledged durable, is cut short.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write))
            f.SetLength(length - 3);
        var cut = await RecoverAsync();
        Assert.Equal([0L, 1, 2, 3], cut.Entries.Select(e => e.FirstGranule));
        Assert.Equal((4L, 5L), (cut.Damage.Single().After, cut.Damage.Single().Through));

        // Or its bytes were garbled: the checksum refuses it and everything after it.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write))
        {
            f.SetLength(length);
            f.Position = length - 10;
            f.Write([0xFF, 0xFF]);
        }
        var garbled = await RecoverAsync();
        Assert.Equal([0L, 1, 2, 3], garbled.Entries.Select(e => e.FirstGranule));
        Assert.Equal((4L, 5L), (garbled.Damage.Single().After, garbled.Damage.Single().Through));
    }

    [Fact]
    public async Task A_flipped_byte_in_the_middle_of_a_segment_is_damage_and_the_records_after_it_are_still_read()
    {
        var journal = await StartAsync();
        for (var i = 0; i < 20; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        // kill -9 (no dispose), then one byte of record 8 flips.
        var segment = Segments().Single();
        FlipByte(segment, RecordOffset(7) + 20);
        var recovery = await RecoverAsync();
        var damage = Assert.Single(recovery.Damage);
        Assert.Equal((7L, 20L), (damage.After, damage.Through));
        Assert.Contains("damaged record", damage.Description, StringComparison.Ordinal);
        Assert.Equal(Enumerable.Range(0, 20).Where(i => i != 7).Select(i => (long)i), recovery.Entries.Select(e => e.FirstGranule));
        Assert.Equal(20, recovery.LastSequence);
        await journal.DisposeAsync();
    }

    [Fact]
    public async Task The_last_segment_cut_at_a_record_boundary_is_damage_because_the_alive_file_knows_the_last_durable_sequence()
    {
        // No sign of life is rewritten while the recoveries below read the file (it is only ever read after the writer died).
        var journal = await StartAsync(options: Quiet(new FileBitmapJournalOptions()));
        for (var i = 0; i < 10; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        var segment = Segments().Single();
        // Exactly after record 5: every record left is whole, as after a crash, but 6-10 were acknowledged.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            f.SetLength(RecordOffset(5));
        var recovery = await RecoverAsync();
        Assert.Equal(5, recovery.Entries.Count);
        var damage = Assert.Single(recovery.Damage);
        Assert.Equal((5L, 10L), (damage.After, damage.Through));
        Assert.Contains("ends at byte", damage.Description, StringComparison.Ordinal);

        // Cut in half (not at a boundary): the same.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            f.SetLength(RecordOffset(5) / 2);
        Assert.NotEmpty((await RecoverAsync()).Damage);
        await journal.DisposeAsync();
    }

    [Fact]
    public async Task A_missing_or_short_segment_is_damage_down_to_the_sequence_that_was_folded()
    {
        var journal = await StartAsync(options: Quiet(new FileBitmapJournalOptions { SegmentEntries = 5 }));
        for (var i = 0; i < 17; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        // Segments: 1-5, 6-10, 11-15 (sealed) and 16-17.
        var segments = Segments();
        Assert.Equal(4, segments.Count);
        Assert.Empty((await RecoverAsync()).Damage);

        // A non-last segment that ends early: the next one says 10 was durable before it.
        var middle = await File.ReadAllBytesAsync(segments[1]);
        await File.WriteAllBytesAsync(segments[1], middle[..RecordOffset(3)]);
        Assert.Equal((8L, 10L), Only((await RecoverAsync()).Damage));

        // A segment deleted outright (the alive file kept).
        File.Delete(segments[1]);
        Assert.Equal((5L, 10L), Only((await RecoverAsync()).Damage));
        await File.WriteAllBytesAsync(segments[1], middle);

        // The last segment deleted: the alive file says 17 was durable.
        var lastBytes = await File.ReadAllBytesAsync(segments[3]);
        File.Delete(segments[3]);
        Assert.Equal((15L, 17L), Only((await RecoverAsync()).Damage));
        await File.WriteAllBytesAsync(segments[3], lastBytes);

        // Folded through 5: the first segment may go, but not the second.
        var part = await journal.ReadSealedAsync();
        await journal.ReleaseSealedAsync(5);
        Assert.False(File.Exists(segments[0]));
        Assert.Empty((await RecoverAsync()).Damage);
        File.Delete(segments[1]);
        var missing = Assert.Single((await RecoverAsync()).Damage);
        Assert.Equal((5L, 10L), (missing.After, missing.Through));
        Assert.Contains("missing", missing.Description, StringComparison.Ordinal);
        Assert.NotNull(part);
        await journal.DisposeAsync();
    }

    [Fact]
    public async Task A_start_after_a_damaged_recovery_leaves_a_whole_journal()
    {
        var journal = await StartAsync();
        for (var i = 0; i < 5; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        await journal.DisposeAsync();
        File.Delete(Segments().Single());

        await using var second = new FileBitmapJournal(JournalDir);
        var recovery = await second.RecoverAsync();
        Assert.Equal((0L, 5L), Only(recovery.Damage));
        // The caller folded (or gave up on) everything: a crash of this run finds no damage from the last one.
        await second.StartAsync(recovery.LastSequence + 1);
        await second.AppendAsync("disk0", "b0", 9, 1);
        var next = await RecoverAsync();
        Assert.Empty(next.Damage);
        Assert.Equal([6L], next.Entries.Select(e => e.Sequence));
    }

    [Fact]
    public async Task A_sealed_segment_damaged_while_running_is_not_folded_away()
    {
        await using var journal = await StartAsync(options: new FileBitmapJournalOptions { SegmentEntries = 5 });
        for (var i = 0; i < 7; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        var first = Segments()[0];
        using (var f = new FileStream(first, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            f.SetLength(RecordOffset(2));
        await Assert.ThrowsAsync<IOException>(() => journal.ReadSealedAsync());
        Assert.True(File.Exists(first));
    }

    /// <summary>Options whose sign of life is not rewritten during a test: recovery reads .alive as a dead writer left it.</summary>
    private static FileBitmapJournalOptions Quiet(FileBitmapJournalOptions options)
    {
        options.AliveInterval = TimeSpan.FromHours(1);
        return options;
    }

    private List<string> Segments() =>
        [.. Directory.GetFiles(Path.GetDirectoryName(JournalDir)!, "journal.*.seg").Order(StringComparer.Ordinal)];

    /// <summary>Where record <paramref name="index"/> (0-based) of a segment of ("disk0", "b0") records starts: a 24-byte header, then 40 bytes each.</summary>
    private static int RecordOffset(int index) => 24 + (index * 40);

    /// <summary>The bytes of a well-formed record, to imitate a group commit torn while written.</summary>
    private static byte[] ValidRecordBytes(long sequence, long granule)
    {
        var bytes = new byte[64];
        return bytes[..JournalCodec.Encode(new JournalEntry(sequence, "disk0", "b0", granule, 1), bytes)];
    }

    private static void FlipByte(string path, long offset)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        f.Position = offset;
        var b = f.ReadByte();
        f.Position = offset;
        f.WriteByte((byte)(b ^ 0x40));
    }

    private static (long After, long Through) Only(IReadOnlyList<JournalDamage> damage)
    {
        var d = Assert.Single(damage);
        return (d.After, d.Through);
    }

    [Fact]
    public async Task Start_drops_recovered_segments_and_numbers_on()
    {
        var journal = await StartAsync();
        await journal.AppendAsync("disk0", "b0", 1, 1);
        await journal.AppendAsync("disk0", "b0", 2, 1);
        await journal.DisposeAsync();

        await using var second = new FileBitmapJournal(JournalDir);
        var recovery = await second.RecoverAsync();
        Assert.Equal(2, recovery.Entries.Count);
        await second.StartAsync(recovery.LastSequence + 1);
        await second.AppendAsync("disk0", "b0", 3, 1);
        Assert.Equal([3L], (await RecoverAsync()).Entries.Select(e => e.Sequence));
    }

    [Fact]
    public async Task A_full_segment_is_sealed_read_and_released()
    {
        var sealedSignal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var journal = await StartAsync(options: new FileBitmapJournalOptions { SegmentEntries = 10 });
        journal.SegmentSealed += () => sealedSignal.TrySetResult();
        for (var i = 0; i < 25; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        await sealedSignal.Task.WaitAsync(TimeSpan.FromSeconds(30));

        var part = await journal.ReadSealedAsync();
        Assert.NotNull(part);
        Assert.Equal(20, part.Through);
        Assert.Equal(Enumerable.Range(1, 20).Select(i => (long)i), part.Entries.Select(e => e.Sequence));

        await journal.ReleaseSealedAsync(part.Through);
        Assert.Null(await journal.ReadSealedAsync());
        Assert.Equal(Enumerable.Range(21, 5).Select(i => (long)i), (await RecoverAsync()).Entries.Select(e => e.Sequence));
    }

    [Fact]
    public async Task The_alive_stamp_bounds_when_the_last_run_may_have_written()
    {
        var before = DateTime.UtcNow;
        var options = new FileBitmapJournalOptions { AliveInterval = TimeSpan.FromSeconds(1), AliveMargin = TimeSpan.FromSeconds(2) };
        var journal = await StartAsync(options: options);
        var after = DateTime.UtcNow;
        await journal.DisposeAsync();

        var until = (await RecoverAsync()).WroteUntilUtc;
        Assert.NotNull(until);
        Assert.InRange(until.Value, before.AddSeconds(3), after.AddSeconds(3));
    }

    [Fact]
    public async Task Appends_fail_once_the_journal_is_closed()
    {
        var journal = await StartAsync();
        await journal.DisposeAsync();
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await journal.AppendAsync("disk0", "b0", 0, 1));
        await using var never = new FileBitmapJournal(_dir.PathOf("never"));
        await Assert.ThrowsAsync<BitmapJournalException>(async () => await never.AppendAsync("disk0", "b0", 0, 1));
    }
}
