using System.Text.Json;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.State;
using Microsoft.EntityFrameworkCore;

namespace BlockMirror.Api.Data;

/// <summary>Jobs on SQLite: one row per job run, the full snapshot as JSON (<see cref="StoredJobSnapshot"/>).</summary>
public sealed class EfJobStore(IDbContextFactory<BlockMirrorDbContext> factory, SqliteWriteLock writeLock) : IJobStore
{
    /// <summary>The snapshot's JSON (lenient: older snapshots lack newer members).</summary>
    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public async Task SaveJobAsync(JobRecord job, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        var row = await db.Jobs.FindAsync([job.Uid], cancellationToken);
        if (row is null)
        {
            row = new JobEntity { Uid = job.Uid, Id = job.Id, Type = job.Type, Status = job.Status, Device = job.Device, Snapshot = "{}" };
            db.Jobs.Add(row);
        }
        row.Id = job.Id;
        row.Type = job.Type;
        row.Status = job.Status;
        row.Device = job.Device;
        row.Target = job.Target;
        row.Error = job.Error;
        row.Outcome = RestoredJob.RecordedOutcome(job) is { } ended ? JobNames.Of(ended.Outcome) : null;
        row.Dismissed = job.Dismissed;
        row.Snapshot = SerializeSnapshot(job.Snapshot);
        row.CreatedAt = job.CreatedAt;
        row.UpdatedAt = job.UpdatedAt;
        row.FinishedAt = job.FinishedAt;
        using (await writeLock.AcquireAsync(cancellationToken))
            await db.SaveChangesAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<JobRecord>> LoadJobsAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        var rows = await db.Jobs.AsNoTracking().OrderBy(j => j.CreatedAt).ToListAsync(cancellationToken);
        return [.. rows.Select(ToRecord)];
    }

    /// <summary>A row as the record it stores (the history reads rows directly).</summary>
    internal static JobRecord ToRecord(JobEntity r) => new(r.Uid, r.Id, r.Type, r.Status, r.Device, r.Target, r.Error, r.Dismissed,
        DeserializeSnapshot(r.Snapshot), r.CreatedAt, r.UpdatedAt, r.FinishedAt);

    /// <summary>A snapshot as the <c>Snapshot</c> column holds it.</summary>
    internal static string SerializeSnapshot(JobInfo info) => JsonSerializer.Serialize(StoredJobSnapshot.From(info), Json);

    internal static JobInfo DeserializeSnapshot(string json) => JsonSerializer.Deserialize<StoredJobSnapshot>(json, Json)!.ToInfo();
}
