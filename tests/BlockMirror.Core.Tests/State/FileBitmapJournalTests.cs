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
    public async Task A_torn_last_record_ends_the_valid_prefix()
    {
        var journal = await StartAsync();
        for (var i = 0; i < 5; i++)
            await journal.AppendAsync("disk0", "b0", i, 1);
        await journal.DisposeAsync();
        var segment = Directory.GetFiles(Path.GetDirectoryName(JournalDir)!, "journal.*.seg").Single();
        var length = new FileInfo(segment).Length;
        // A crash in the middle of a write: the last record is cut short.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write))
            f.SetLength(length - 3);
        Assert.Equal([0L, 1, 2, 3], (await RecoverAsync()).Entries.Select(e => e.FirstGranule));

        // Or its bytes were garbled: the checksum refuses it and everything after it.
        using (var f = new FileStream(segment, FileMode.Open, FileAccess.Write))
        {
            f.SetLength(length);
            f.Position = length - 10;
            f.Write([0xFF, 0xFF]);
        }
        Assert.Equal([0L, 1, 2, 3], (await RecoverAsync()).Entries.Select(e => e.FirstGranule));
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
