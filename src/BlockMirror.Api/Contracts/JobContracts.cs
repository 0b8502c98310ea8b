using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/jobs/mirror (QEMU's blockdev-mirror).</summary>
/// <param name="Id">Job id (QEMU's job-id), unique among listed jobs. Default: the device's name.</param>
/// <param name="Device">The node copied from; it stays in use (writes go on) during the job.</param>
/// <param name="Target">The node copied to: not the device, not read-only, the device's size. On complete the device takes over its image and the target node goes away.</param>
/// <param name="Sync">What is copied: <c>full</c> (everything), <c>top</c> (what the device's own layer allocates; for raw = full), <c>none</c> (only writes from now on). Required: QEMU has no default.</param>
/// <param name="Bitmap">A bitmap of the device whose dirty granules are what is copied (only with sync full, never with granularity); it must be enabled.</param>
/// <param name="BitmapMode">What happens to <c>bitmap</c>: <c>always</c> (it is the working bitmap: busy, empty after success), <c>never</c> (a private copy works; it keeps recording), <c>on-success</c> (like never; on success it keeps only what the job left dirty). Default always; only with <c>bitmap</c>.</param>
/// <param name="Granularity">Bytes per working-bitmap bit: a power of two in 512 … 64 MiB, or 0 for the default (64 KiB); not with <c>bitmap</c>.</param>
/// <param name="BufSize">Bytes in flight at most (QEMU's buf-size), rounded up to the granularity. Default 16 MiB.</param>
/// <param name="Speed">Copy rate limit in bytes per second (an integer, or a size such as 10M); 0 = unlimited. Default 0.</param>
/// <param name="CopyMode"><c>background</c> (writes dirty the working bitmap and are copied later), <c>write-blocking</c> (a write completes only once it is on both nodes) or <c>auto</c> (background until the remaining bytes stop shrinking for <c>Jobs:AutoCopyModeWindow</c> while writes go on, then write-blocking by itself). Default background.</param>
/// <param name="OnSourceError">On a read error: <c>report</c> (the job fails), <c>ignore</c> (retry later), <c>stop</c> (pause with ioStatus set), <c>enospc</c> (stop on no-space, report otherwise). Default report.</param>
/// <param name="OnTargetError">On a write error, as onSourceError. Default report.</param>
/// <param name="AutoFinalize">Finalize (pivot) by itself once complete; false waits in pending for POST .../finalize. Default true.</param>
/// <param name="AutoDismiss">Leave the job list by itself once concluded; false waits for POST .../dismiss. Default true.</param>
/// <param name="Unmap">Copy zeroes as holes where the target can. Default true.</param>
public sealed record MirrorJobRequest(
    string? Id,
    [property: Required] string? Device,
    [property: Required] string? Target,
    [property: Required] MirrorSyncMode? Sync,
    string? Bitmap,
    BitmapMode? BitmapMode,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? Granularity,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? BufSize,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? Speed,
    MirrorCopyMode? CopyMode,
    BlockdevOnError? OnSourceError,
    BlockdevOnError? OnTargetError,
    bool? AutoFinalize,
    bool? AutoDismiss,
    bool? Unmap);

/// <summary>A job: its options, its progress and, once concluded, how it ended.</summary>
/// <param name="Id">The job's id.</param>
/// <param name="Type">QEMU's job type: <c>mirror</c>.</param>
/// <param name="Status">QEMU's job status: created, running, paused, ready, standby, waiting, pending, aborting, concluded (a dismissed job keeps showing concluded).</param>
/// <param name="Device">The node copied from.</param>
/// <param name="Target">The node copied to (gone after a completed pivot).</param>
/// <param name="Sync">full, top or none.</param>
/// <param name="Bitmap">The caller's bitmap the job started from, or null.</param>
/// <param name="BitmapMode">always, never or on-success; null without a bitmap.</param>
/// <param name="CopyMode">The copy mode asked for (at the start or by the last PATCH): background, write-blocking or auto.</param>
/// <param name="EffectiveCopyMode">What writes do now: background or write-blocking (an auto job shows write-blocking once it switched).</param>
/// <param name="CopyModeSwitchedAt">When writes became write-blocking while the job ran (auto's switch or a PATCH; UTC), or null. The BLOCK_JOB_COPY_MODE_SWITCHED event says why.</param>
/// <param name="Granularity">Bytes per working-bitmap bit.</param>
/// <param name="BufSize">Bytes in flight at most.</param>
/// <param name="Speed">Rate limit in bytes per second, 0 = unlimited.</param>
/// <param name="CurrentProgress">Bytes done; never decreases.</param>
/// <param name="TotalProgress">currentProgress + remaining: may move both ways while writes dirty the device, as in QEMU.</param>
/// <param name="Remaining">Bytes still dirty or in flight.</param>
/// <param name="BytesCopied">Bytes brought to the target (copied, zeroed or discarded), a granule again each time it is brought again.</param>
/// <param name="CopyRate">Bytes per second copied over the last few seconds; 0 while paused and once finished.</param>
/// <param name="DirtyRate">Bytes per second newly dirtied by writes over the last few seconds (writes go on while paused); 0 once finished.</param>
/// <param name="EtaSeconds">Seconds until in sync at the current rates; null while paused, while not converging (writes outpace the copy) and once finished.</param>
/// <param name="Ready">In ready (or standby): device and target match; complete or soft cancel may be sent.</param>
/// <param name="Paused">A pause is requested or in force (by the user or an error policy 'stop'): nothing is copied.</param>
/// <param name="ActivelySynced">Writes are write-blocking and device and target were found identical: they stay so (until an error).</param>
/// <param name="IoStatus"><c>ok</c>, or after an error policy 'stop': <c>failed</c> / <c>nospace</c> (reset by resume).</param>
/// <param name="Error">The error the job concluded with: a failure's sentence, or "Operation canceled" after a force cancel (as in QEMU); null otherwise.</param>
/// <param name="AutoFinalize">Finalizes by itself once complete.</param>
/// <param name="AutoDismiss">Leaves the job list by itself once concluded.</param>
/// <param name="CreatedAt">When the job was started (UTC).</param>
/// <param name="ReadyAt">When it first became ready (UTC), or null.</param>
/// <param name="UpdatedAt">When its state last changed (UTC).</param>
/// <param name="FinishedAt">When it concluded (UTC), or null.</param>
/// <param name="DurationSeconds">Seconds from createdAt to finishedAt; while the job runs, to now.</param>
/// <param name="Outcome">How a concluded job ended: <c>completed</c> (did its work: a mirror pivoted), <c>cancelled</c> (see cancelMode), <c>failed</c> (see error); null until concluded.</param>
/// <param name="CancelMode">For a cancelled job: <c>soft</c> (a cancel in ready: a point-in-time copy, no pivot, no error) or <c>force</c> (aborted, error "Operation canceled"); null otherwise.</param>
public sealed record JobDto(
    string Id,
    string Type,
    string Status,
    string Device,
    string? Target,
    string? Sync,
    string? Bitmap,
    string? BitmapMode,
    string? CopyMode,
    string? EffectiveCopyMode,
    DateTime? CopyModeSwitchedAt,
    long Granularity,
    long BufSize,
    long Speed,
    long CurrentProgress,
    long TotalProgress,
    long Remaining,
    long BytesCopied,
    long CopyRate,
    long DirtyRate,
    long? EtaSeconds,
    bool Ready,
    bool Paused,
    bool ActivelySynced,
    string IoStatus,
    string? Error,
    bool AutoFinalize,
    bool AutoDismiss,
    DateTime CreatedAt,
    DateTime? ReadyAt,
    DateTime UpdatedAt,
    DateTime? FinishedAt,
    double DurationSeconds,
    string? Outcome,
    string? CancelMode);

/// <summary>A list of jobs; a page of the history carries the cursor of the next one.</summary>
/// <param name="Items">The jobs.</param>
/// <param name="Next">With include=history: pass as <c>after</c> to get the next page; null on the last page (and for the other lists).</param>
public sealed record JobListDto(IReadOnlyList<JobDto> Items, string? Next);
