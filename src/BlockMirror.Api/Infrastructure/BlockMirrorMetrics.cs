using System.Diagnostics.Metrics;
using BlockMirror.Core;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The service's own instruments on the <c>BlockMirror</c> meter, exported at /metrics. Job and
/// bitmap figures are observable: they are read from the block layer at scrape time, so the copy
/// loop and the write path pay nothing for them and the values always equal what the API reports.
/// </summary>
public sealed class BlockMirrorMetrics
{
    public const string MeterName = "BlockMirror";

    /// <summary>Every status a listed job can be in; each is exported (0 when empty) so series do not appear and vanish.</summary>
    private static readonly string[] s_statuses =
        [.. new[] { JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby,
            JobStatus.Waiting, JobStatus.Pending, JobStatus.Aborting, JobStatus.Concluded }.Select(JobNames.Of)];

    private readonly BlockLayer _layer;

    public BlockMirrorMetrics(IMeterFactory meterFactory, BlockLayer layer)
    {
        _layer = layer;
        // The factory owns the meter and disposes it with the host.
        var meter = meterFactory.Create(MeterName);

        // The tag is job_id, not job: Prometheus reserves "job" for the scrape target.
        meter.CreateObservableCounter("blockmirror.job.copied", ObserveJobBytesCopied, unit: "By",
            description: "Bytes a listed (not dismissed) job brought to its target: the Job's bytesCopied.");
        meter.CreateObservableCounter("blockmirror.copied", ObserveTotalBytesCopied, unit: "By",
            description: "Bytes brought to targets by every job this service knows, dismissed ones included.");
        meter.CreateObservableGauge("blockmirror.jobs", ObserveJobsByStatus, unit: "{job}",
            description: "Listed (not dismissed) jobs by status.");
        meter.CreateObservableGauge("blockmirror.bitmap.dirty", ObserveDirtyBytes, unit: "By",
            description: "Dirty bytes of each bitmap: the Bitmap's count.");
        meter.CreateObservableGauge("blockmirror.bitmap.memory", () => _layer.BitmapMemoryInUse, unit: "By",
            description: "Memory the bitmaps take, as counted against Limits:BitmapMemoryBytes.");

        // Failures an operator must act on (the service goes on, but the disk or database needs attention).
        meter.CreateObservableCounter("blockmirror.journal.fold.failures", () => _layer.FailedFolds, unit: "{failure}",
            description: "Background folds of the bitmap journal into the checkpoints that failed (the journal grows until one succeeds).");
        meter.CreateObservableCounter("blockmirror.job.save.failures", () => _layer.FailedJobSaves, unit: "{failure}",
            description: "Job records the database refused (the stored job state lags until a save succeeds).");

        NbdRequests = meter.CreateCounter<long>("blockmirror.nbd.requests", unit: "{request}",
            description: "NBD transmission requests handled by the NBD server.");
    }

    /// <summary>
    /// NBD transmission requests read by the server (refused ones included), tagged <c>export</c>
    /// and <c>command</c> (read, write, block-status, …); <see cref="NbdHost"/> adds them.
    /// </summary>
    public Counter<long> NbdRequests { get; }

    private IEnumerable<Measurement<long>> ObserveJobBytesCopied()
    {
        foreach (var job in _layer.Jobs)
        {
            var info = job.GetInfo();
            yield return new Measurement<long>(info.BytesCopied, new KeyValuePair<string, object?>("job_id", info.Id));
        }
    }

    private long ObserveTotalBytesCopied()
    {
        var total = 0L;
        foreach (var job in _layer.JobHistory.Concat(_layer.Jobs))
            total += job.GetInfo().BytesCopied;
        return total;
    }

    private IEnumerable<Measurement<long>> ObserveJobsByStatus()
    {
        var counts = s_statuses.ToDictionary(s => s, _ => 0L, StringComparer.Ordinal);
        foreach (var job in _layer.Jobs)
        {
            var status = job.GetInfo().Status;
            counts[status] = counts.GetValueOrDefault(status) + 1;
        }
        foreach (var (status, count) in counts)
            yield return new Measurement<long>(count, new KeyValuePair<string, object?>("status", status));
    }

    private IEnumerable<Measurement<long>> ObserveDirtyBytes()
    {
        foreach (var node in _layer.Nodes)
        {
            foreach (var bitmap in node.Bitmaps)
            {
                yield return new Measurement<long>(bitmap.Count,
                    new KeyValuePair<string, object?>("node", node.Name), new KeyValuePair<string, object?>("bitmap", bitmap.Name));
            }
        }
    }
}
