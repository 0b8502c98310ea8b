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
public sealed class StartupService(
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
        // An operator should know why a persistent bitmap can only be removed now (BlockLayer.Unprovable).
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
            return _stop ??= StopOnceAsync(cancellationToken);
    }

    private async Task StopOnceAsync(CancellationToken cancellationToken)
    {
        foreach (var p in participants.Reverse())
            await p.StopAsync(cancellationToken);
        await layer.ShutdownJobsAsync(cancellationToken);
        await layer.StopAsync(cancellationToken);
        await events.DisposeAsync();
    }
}
