using BlockMirror.Api.Infrastructure;
using System.Text.Json.Serialization;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/jobs/{id}/cancel (optional).</summary>
/// <param name="Force">Abort even in ready (no point-in-time copy). Outside ready every cancel aborts. Default false.</param>
public sealed record CancelJobRequest(bool? Force);

/// <summary>Body of PATCH /api/v1/jobs/{id}: set-speed and/or block-job-change, all or nothing.</summary>
/// <param name="Speed">New rate limit in bytes per second (an integer, or a size such as 10M); 0 = unlimited.</param>
/// <param name="CopyMode">New copy mode. Writes never go back from write-blocking: background → write-blocking or → auto; auto (not yet switched) → write-blocking (switch now) or → background (stop watching). Anything else: 409 copy-mode-change.</param>
public sealed record ChangeJobRequest([property: JsonConverter(typeof(ByteCountJsonConverter))] long? Speed, MirrorCopyMode? CopyMode);
