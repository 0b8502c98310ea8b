using BlockMirror.Api.Data;
using BlockMirror.Api.Events;
using BlockMirror.Core;
using Microsoft.EntityFrameworkCore;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Brings the service up in order: migrations (before any worker), WAL mode, the event hub,
/// then the block layer's state rebuilt from the database. On stop, the block layer stops
/// cleanly (persistent bitmaps stored, in-use cleared) and pending events are written.
/// </summary>
public sealed partial class StartupService(
    IDbContextFactory<BlockMirrorDbContext> factory,
    EventHub events,
    BlockLayer layer,
    IEnumerable<IStartupParticipant> participants,
    ILogger<StartupService> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await using (var db = await factory.CreateDbContextAsync(cancellationToken))
        {
            await db.Database.MigrateAsync(cancellationToken);
            await db.Database.ExecuteSqlRawAsync("PRAGMA journal_mode=WAL;", cancellationToken);
        }
        await events.StartAsync(cancellationToken);
        await layer.LoadAsync(cancellationToken);
        foreach (var failure in layer.LoadFailures)
            logger.LogWarning("Not restored: {Failure}", failure);
        // An operator should know why a persistent bitmap can only be removed now (BitmapPersistence.Unprovable).
        foreach (var bitmap in layer.InconsistentAtLoad)
            logger.LogWarning("Persistent bitmap not proven exact, restored inconsistent: {Bitmap}", bitmap);
        await layer.RecoverJobsAsync(cancellationToken);
        foreach (var p in participants)
            await p.StartAsync(cancellationToken);
    }

    private readonly Lock _stopLock = new();
    private Task? _stop;

    /// <summary>
    /// A test host stops its hosted services twice, concurrently: WebApplicationFactory's dispose and
    /// the app's own run loop, which disposes the services as soon as its call returns. The clean stop
    /// runs once, and the second caller waits for it, or the services would be disposed under it.
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        lock (_stopLock)
            return _stop ??= StopOnceAsync();
    }

    /// <summary>
    /// Not the host's token: the host cancels it once requests had their ShutdownTimeout, and a clean
    /// stop abandoned then loses its checkpoint (every persistent bitmap left to the journal) and
    /// ends in the services' disposal, where the database can no longer be reached. Each step has
    /// its own bound (<see cref="BlockLayer.StopWait"/>, NBD's grace period), and a step that fails
    /// is logged and the next one still runs: the nodes' checkpoints come last and matter most.
    /// </summary>
    private async Task StopOnceAsync()
    {
        foreach (var p in participants.Reverse())
            await StepAsync(p.GetType().Name, () => p.StopAsync(CancellationToken.None));
        await StepAsync("jobs", () => layer.ShutdownJobsAsync(CancellationToken.None));
        await StepAsync("block layer", () => layer.StopAsync(CancellationToken.None));
        foreach (var failure in layer.StopFailures)
            LogStopFailure(logger, failure);
        await StepAsync("events", async () => await events.DisposeAsync());
    }

    private async Task StepAsync(string step, Func<Task> stop)
    {
        try
        {
            await stop();
        }
        catch (Exception e)
        {
            LogStepFailed(logger, e, step);
        }
    }

    [LoggerMessage(10, LogLevel.Warning, "Not stopped cleanly: {Failure}")]
    private static partial void LogStopFailure(ILogger logger, string failure);

    [LoggerMessage(11, LogLevel.Error, "Stopping {Step} failed; the stop goes on")]
    private static partial void LogStepFailed(ILogger logger, Exception exception, string step);
}
