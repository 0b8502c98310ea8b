using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/jobs/{id}/cancel.</summary>
/// <param name="Force">Abandon at once even in ready (no point-in-time copy).</param>
public sealed record CancelJobRequest(bool? Force);

/// <summary>Body of PATCH /api/v1/jobs/{id}: set-speed and/or block-job-change.</summary>
/// <param name="Speed">Bytes per second, 0 = unlimited.</param>
/// <param name="CopyMode">Only background → write-blocking is allowed.</param>
public sealed record ChangeJobRequest(long? Speed, MirrorCopyMode? CopyMode);
