using BlockMirror.Core.State;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>An <see cref="IJobStore"/> in memory that also keeps every save, in order.</summary>
public sealed class InMemoryJobStore : IJobStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<Guid, JobRecord> _latest = [];
    private readonly List<JobRecord> _saves = [];

    public IReadOnlyList<JobRecord> Saves
    {
        get
        {
            lock (_lock)
                return [.. _saves];
        }
    }

    public void Seed(JobRecord record)
    {
        lock (_lock)
            _latest[record.Uid] = record;
    }

    public JobRecord? Latest(Guid uid)
    {
        lock (_lock)
            return _latest.GetValueOrDefault(uid);
    }

    public Task SaveJobAsync(JobRecord job, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            _latest[job.Uid] = job;
            _saves.Add(job);
        }
        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<JobRecord>> LoadJobsAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
            return Task.FromResult<IReadOnlyList<JobRecord>>([.. _latest.Values]);
    }
}
