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
        await layer.RecoverJobsAsync(cancellationToken);
        foreach (var p in participants)
            await p.StartAsync(cancellationToken);
    }

    private int _stopped;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // A test host may stop its hosted services twice; the clean stop runs once.
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
            return;
        foreach (var p in participants.Reverse())
            await p.StopAsync(cancellationToken);
        await layer.ShutdownJobsAsync(cancellationToken);
        await layer.StopAsync(cancellationToken);
        await events.DisposeAsync();
    }
}
