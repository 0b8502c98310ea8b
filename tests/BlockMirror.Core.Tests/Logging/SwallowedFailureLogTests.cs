using BlockMirror.Core.Events;
using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Transactions;
using BlockMirror.Tests.Shared;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Core.Tests.Logging;

/// <summary>
/// Failures the layer swallows so the service goes on (a job record the store refused, a background
/// fold of the journal that failed) are logged with what they concern and counted for /metrics.
/// </summary>
public sealed class SwallowedFailureLogTests : IAsyncLifetime
{
    private const long G = 65536;

    private readonly TempImageDirectory _dir = new();
    private readonly RecordingLoggerFactory _logs = new();
    private readonly List<IAsyncDisposable> _owned = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        for (var i = _owned.Count - 1; i >= 0; i--)
            await _owned[i].DisposeAsync();
        _dir.Dispose();
    }

    [Fact]
    public async Task A_job_record_the_store_refuses_is_logged_with_the_job_and_counted()
    {
        var layer = Own(new BlockLayer(Root(), new InMemoryBlockStore(), NullEventSink.Instance, TimeProvider.System, loggers: _logs)
        {
            JobStore = new RefusingJobStore(),
        });
        await layer.CreateNodeAsync(new NodeSpec("src", "raw", "src.img", null, 4 * G, false));
        await layer.CreateNodeAsync(new NodeSpec("dst", "raw", "dst.img", null, 4 * G, false));

        // Speed 1: the job stays running until the force cancel below.
        var job = await layer.StartMirrorAsync(new MirrorOptions { Id = "m0", Device = "src", Target = "dst", Speed = 1 });
        await layer.FlushJobSavesAsync();

        Assert.True(layer.FailedJobSaves > 0);
        Assert.Contains(_logs.Entries, e => e.Level == LogLevel.Error && e.Message.Contains("Job 'm0'", StringComparison.Ordinal) && e.Exception is IOException);
        await layer.CancelJobAsync(job.Id, force: true);
        await job.Concluded;
    }

    [Fact]
    public async Task A_background_fold_that_fails_is_logged_and_counted_and_the_next_one_retries()
    {
        var store = new InMemoryBlockStore();
        var journal = new FileBitmapJournal(_dir.PathOf("journal"), new FileBitmapJournalOptions { SegmentEntries = 2 });
        _owned.Add(journal);
        var layer = Own(new BlockLayer(Root(), store, NullEventSink.Instance, TimeProvider.System, loggers: _logs) { Journal = journal });
        await layer.LoadAsync();
        var node = await layer.CreateNodeAsync(new NodeSpec("disk0", "raw", "disk0.img", null, 64 * G, false));
        await layer.BitmapActionAsync(new BitmapAddAction("disk0", "p", (int)G, persistent: true, disabled: false));

        store.FailWrites = new IOException("database is full");
        for (var g = 0; g < 8; g++)
            await node.WriteAsync(g * G, new byte[1]);
        for (var i = 0; i < 500 && layer.FailedFolds == 0; i++)
            await Task.Delay(10);

        Assert.True(layer.FailedFolds > 0);
        Assert.Equal("database is full", layer.LastFoldError);
        Assert.Contains(_logs.Entries, e => e.Level == LogLevel.Error && e.Category == typeof(BitmapPersistence).FullName && e.Exception?.Message == "database is full");

        // The segments stayed: a fold once the database takes writes again stores them.
        var before = store.FindBitmap("disk0", "p")!.JournalSequence;
        store.FailWrites = null;
        await layer.FoldJournalAsync();
        Assert.True(store.FindBitmap("disk0", "p")!.JournalSequence > before);
    }

    private ImageRoot Root() => new(_dir.PathOf("root"));

    private BlockLayer Own(BlockLayer layer)
    {
        _owned.Add(layer);
        return layer;
    }

    /// <summary>A job store whose database cannot be written.</summary>
    private sealed class RefusingJobStore : IJobStore
    {
        public Task SaveJobAsync(JobRecord job, CancellationToken cancellationToken = default) =>
            Task.FromException(new IOException("disk I/O error"));

        public Task<IReadOnlyList<JobRecord>> LoadJobsAsync(CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<JobRecord>>([]);
    }
}
