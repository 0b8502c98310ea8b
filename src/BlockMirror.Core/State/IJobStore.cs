namespace BlockMirror.Core.State;

/// <summary>
/// Where jobs are written through (SQLite in the host). The engine queues saves in order and
/// never lets the copy loop wait for them: on every status change and at most every ~2 s of
/// progress. A save replaces the previous record of the same <see cref="JobRecord.Uid"/>.
/// </summary>
public interface IJobStore
{
    Task SaveJobAsync(JobRecord job, CancellationToken cancellationToken = default);

    /// <summary>Every stored job, dismissed ones included.</summary>
    Task<IReadOnlyList<JobRecord>> LoadJobsAsync(CancellationToken cancellationToken = default);
}
