using System.Globalization;
using BlockMirror.Api.Data;
using BlockMirror.Core;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Unhealthy (so <c>/healthz</c> answers 503) while the database or the bitmap journal cannot be
/// written. Costs no write while both work: it reads the last failures (<see cref="StorageHealth"/>,
/// the journal's own). While the database failed, it probes with one small write (at most once per
/// <see cref="StorageHealth.ProbeInterval"/>); while the journal failed, it asks the block layer for a
/// repair, so space freed on the disk is noticed at the next probe.
/// </summary>
public sealed class StorageHealthCheck(
    StorageHealth health,
    BlockLayer layer,
    IDbContextFactory<BlockMirrorDbContext> factory,
    SqliteWriteLock writeLock) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (health.DatabaseFailure is not null && health.TryStartProbe())
            await ProbeAsync(cancellationToken);
        var problems = new List<string>();
        if (health.DatabaseFailure is { } database)
            problems.Add($"the database cannot be written: {database.Message}");
        if (layer.Journal?.Failure is { } journal)
        {
            layer.RequestJournalRepair();
            var repair = layer.LastJournalRepairError is { } error ? $" (last repair attempt: {error})" : "";
            problems.Add($"the bitmap journal cannot be written: {journal.Message}{repair}");
        }
        return problems.Count == 0 ? HealthCheckResult.Healthy() : HealthCheckResult.Unhealthy(string.Join("; ", problems));
    }

    /// <summary>
    /// One real write: the header's user_version rewritten with its own value (EF Core does not use
    /// it), in a transaction that commits to the WAL like any other write.
    /// </summary>
    private async Task ProbeAsync(CancellationToken cancellationToken)
    {
        try
        {
            await using var db = await factory.CreateDbContextAsync(cancellationToken);
            using var held = await writeLock.AcquireAsync(cancellationToken);
            await using var tx = await db.Database.BeginTransactionAsync(cancellationToken);
            var version = await db.Database.SqlQueryRaw<long>("SELECT user_version AS Value FROM pragma_user_version").SingleAsync(cancellationToken);
            // A pragma takes no parameters; the value is the integer just read, formatted invariantly.
#pragma warning disable EF1003
            await db.Database.ExecuteSqlRawAsync("PRAGMA user_version = " + version.ToString(CultureInfo.InvariantCulture), cancellationToken);
#pragma warning restore EF1003
            await tx.CommitAsync(cancellationToken);
            health.DatabaseWritten();
        }
        catch (Exception e) when (StorageFailures.IsStorageFailure(e))
        {
            health.DatabaseFailed(e);
        }
    }
}
