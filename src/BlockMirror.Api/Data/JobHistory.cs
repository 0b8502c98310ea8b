using System.Text;
using BlockMirror.Api.Contracts;
using BlockMirror.Api.Endpoints;
using BlockMirror.Core;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.State;
using Microsoft.EntityFrameworkCore;

namespace BlockMirror.Api.Data;

/// <summary>
/// Finished jobs as the database keeps them (GET /api/v1/jobs?include=history): every concluded
/// job, dismissed or not, of this and earlier runs of the service, newest first, paged by a cursor
/// on (finishedAt, uid) so a page boundary never skips or repeats a job while others finish.
/// </summary>
public sealed class JobHistory(IDbContextFactory<BlockMirrorDbContext> factory, BlockLayer layer)
{
    public const int DefaultLimit = 50;
    public const int MaxLimit = 500;

    private static readonly string Concluded = JobNames.Of(JobStatus.Concluded);

    /// <summary>Up to <paramref name="limit"/> jobs finished before <paramref name="after"/> (a cursor from an earlier page).</summary>
    public async Task<JobListDto> PageAsync(int limit, string? after, CancellationToken cancellationToken)
    {
        // A job that just concluded may still have its save queued: the page must show it.
        await layer.FlushJobSavesAsync().WaitAsync(cancellationToken);
        Cursor? cursor = after is null ? null : Cursor.Parse(after);
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        var query = db.Jobs.AsNoTracking().Where(j => j.Status == Concluded && j.FinishedAt != null);
        if (cursor is { } c)
            query = query.Where(j => j.FinishedAt < c.FinishedAt || (j.FinishedAt == c.FinishedAt && j.Uid < c.Uid));
        var rows = await query.OrderByDescending(j => j.FinishedAt).ThenByDescending(j => j.Uid)
            .Take(limit + 1).ToListAsync(cancellationToken);
        var page = rows.Take(limit).ToList();
        var next = rows.Count > limit ? Cursor.Of(page[^1]) : null;
        var wanted = page.Select(r => r.Uid).ToHashSet();
        var live = new Dictionary<Guid, Job>();
        // A job dismissed between the two reads is in both lists: the later read wins.
        foreach (var job in layer.Jobs.Concat(layer.JobHistory).Where(j => wanted.Contains(j.Uid)))
            live[job.Uid] = job;
        return new JobListDto([.. page.Select(r => live.TryGetValue(r.Uid, out var job) ? job.ToDto() : ToDto(r))], next);
    }

    /// <summary>A stored job this process does not have: the record as it was written when it concluded.</summary>
    private JobDto ToDto(JobEntity row)
    {
        var record = EfJobStore.ToRecord(row);
        var ended = RestoredJob.RecordedOutcome(record);
        var info = record.Snapshot with
        {
            Status = Concluded,
            Error = record.Error,
            Ready = false,
            Paused = false,
            CopyRate = 0,
            DirtyRate = 0,
            EtaSeconds = null,
            FinishedAt = record.FinishedAt,
            Outcome = ended is { } o ? JobNames.Of(o.Outcome) : null,
            CancelMode = ended?.CancelMode is { } m ? JobNames.Of(m) : null,
        };
        return info.ToDto(layer.UtcNow);
    }

    /// <summary>The position after a job in the history's order, opaque to clients (base64url).</summary>
    private readonly record struct Cursor(DateTime FinishedAt, Guid Uid)
    {
        public static string Of(JobEntity row) =>
            Convert.ToBase64String(Encoding.ASCII.GetBytes($"{row.FinishedAt!.Value.Ticks}:{row.Uid:N}")).TrimEnd('=').Replace('+', '-').Replace('/', '_');

        public static Cursor Parse(string text)
        {
            try
            {
                var b64 = text.Replace('-', '+').Replace('_', '/');
                var raw = Encoding.ASCII.GetString(Convert.FromBase64String(b64.PadRight(b64.Length + (4 - b64.Length % 4) % 4, '=')));
                var parts = raw.Split(':');
                if (parts.Length == 2 && long.TryParse(parts[0], out var ticks) && ticks is >= 0 && ticks <= 3155378975999999999 && Guid.TryParseExact(parts[1], "N", out var uid))
                    return new Cursor(new DateTime(ticks, DateTimeKind.Utc), uid);
            }
            catch (FormatException)
            {
            }
            throw Infrastructure.RequestValidationException.For("after", "expected the 'next' value of an earlier page");
        }
    }
}
