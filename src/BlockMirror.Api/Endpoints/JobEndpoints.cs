using BlockMirror.Api.Contracts;
using BlockMirror.Api.Data;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core;
using BlockMirror.Core.Jobs;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/jobs: blockdev-mirror and the job verbs.</summary>
public static class JobEndpoints
{
    /// <summary>The values of <c>?include=</c> on GET /jobs.</summary>
    private static readonly string[] s_includes = ["dismissed", "history"];

    public static RouteGroupBuilder MapJobEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/jobs").WithTags("Jobs");
        group.MapPost("/mirror", StartMirror).WithName(nameof(StartMirror))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/", ListJobs).WithName(nameof(ListJobs)).ProducesProblem(400);
        group.MapGet("/{id}", GetJob).WithName(nameof(GetJob)).ProducesProblem(400).ProducesProblem(404);
        group.MapPost("/{id}/pause", PauseJob).WithName(nameof(PauseJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/resume", ResumeJob).WithName(nameof(ResumeJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/complete", CompleteJob).WithName(nameof(CompleteJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/finalize", FinalizeJob).WithName(nameof(FinalizeJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/dismiss", DismissJob).WithName(nameof(DismissJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/cancel", CancelJob).WithName(nameof(CancelJob)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapPatch("/{id}", ChangeJob).WithName(nameof(ChangeJob)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        return group;
    }

    /// <summary>Start a mirror job (blockdev-mirror).</summary>
    /// <remarks>
    /// Every refusal is synchronous and has its code (checked in QEMU's order: the nodes, the
    /// granularity, busy nodes, the bitmap, bufSize, into itself, the id, speed, the target, the
    /// sizes); then the job runs in the background: watch it with GET /api/v1/jobs/{id} or the events.
    /// </remarks>
    public static async Task<Created<JobDto>> StartMirror(MirrorJobRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var job = await layer.StartMirrorAsync(ToOptions(request), cancellationToken);
        return TypedResults.Created($"/api/v1/jobs/{Uri.EscapeDataString(job.Id)}", job.ToDto());
    }

    /// <summary>The request as the engine's options (defaults are QEMU's; sync has none).</summary>
    public static MirrorOptions ToOptions(MirrorJobRequest request) => new()
    {
        Id = request.Id,
        Device = RequestValidationException.Require(request.Device, "device"),
        Target = RequestValidationException.Require(request.Target, "target"),
        Sync = RequestValidationException.Require(request.Sync, "sync"),
        Bitmap = request.Bitmap,
        BitmapMode = request.BitmapMode,
        Granularity = request.Granularity,
        BufSize = request.BufSize,
        Speed = request.Speed ?? 0,
        CopyMode = request.CopyMode ?? MirrorCopyMode.Background,
        OnSourceError = request.OnSourceError ?? BlockdevOnError.Report,
        OnTargetError = request.OnTargetError ?? BlockdevOnError.Report,
        AutoFinalize = request.AutoFinalize ?? true,
        AutoDismiss = request.AutoDismiss ?? true,
        Unmap = request.Unmap ?? true,
    };

    /// <summary>List jobs; with include=history, the finished ones kept in the database.</summary>
    /// <remarks>
    /// Without <c>include</c>: the jobs not dismissed, oldest first. <c>include=dismissed</c> adds the
    /// dismissed jobs this process knows. <c>include=history</c>: every concluded job (dismissed or not,
    /// also from earlier runs of the service), newest finished first, <c>limit</c> per page (default 50,
    /// at most 500); pass the response's <c>next</c> as <c>after</c> for the next page.
    /// </remarks>
    /// <param name="include"><c>dismissed</c> or <c>history</c>.</param>
    /// <param name="limit">include=history: jobs per page, 1 … 500 (default 50).</param>
    /// <param name="after">include=history: the <c>next</c> of the previous page.</param>
    public static async Task<Ok<JobListDto>> ListJobs(BlockLayer layer, JobHistory history, CancellationToken cancellationToken,
        string? include = null, int? limit = null, string? after = null)
    {
        CheckInclude(include);
        if (include == "history")
        {
            if (limit is < 1 or > JobHistory.MaxLimit)
                throw RequestValidationException.For("limit", $"expected an integer in 1 … {JobHistory.MaxLimit}");
            return TypedResults.Ok(await history.PageAsync(limit ?? JobHistory.DefaultLimit, after, cancellationToken));
        }
        if (limit is not null || after is not null)
            throw RequestValidationException.For(limit is not null ? "limit" : "after", "only with include=history");
        var jobs = include == "dismissed" ? layer.JobHistory.Concat(layer.Jobs) : layer.Jobs;
        return TypedResults.Ok(new JobListDto([.. jobs.Select(j => j.ToDto()).OrderBy(j => j.CreatedAt)], null));
    }

    /// <summary>Get a job.</summary>
    /// <remarks>A dismissed job is found only with <c>include=dismissed</c> (the latest run with that id).</remarks>
    /// <param name="include"><c>dismissed</c>: also find a dismissed job.</param>
    public static Ok<JobDto> GetJob(string id, BlockLayer layer, string? include = null)
    {
        if (include is not null and not "dismissed")
            throw RequestValidationException.For("include", "expected: dismissed");
        return TypedResults.Ok(layer.GetJob(id, include == "dismissed").ToDto());
    }

    /// <summary>Pause a job (block-job-pause).</summary>
    /// <remarks>It stops copying once its requests in flight answer (status paused, or standby in ready). A job the user already paused: job-already-paused.</remarks>
    public static async Task<Ok<JobDto>> PauseJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.PauseJobAsync(id, cancellationToken)).ToDto());

    /// <summary>Resume a paused job (block-job-resume).</summary>
    /// <remarks>Also resumes a job an error policy 'stop' paused (it retries what failed; ioStatus becomes ok). A job not paused: job-not-paused.</remarks>
    public static async Task<Ok<JobDto>> ResumeJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.ResumeJobAsync(id, cancellationToken)).ToDto());

    /// <summary>Complete a ready mirror: converge, then pivot (block-job-complete).</summary>
    /// <remarks>The device node then reads and writes the target's image, keeping its name, bitmaps and exports; the target node goes away.</remarks>
    public static async Task<Ok<JobDto>> CompleteJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.CompleteJobAsync(id, cancellationToken)).ToDto());

    /// <summary>Finalize a pending job (block-job-finalize; jobs started with autoFinalize false).</summary>
    public static async Task<Ok<JobDto>> FinalizeJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.FinalizeJobAsync(id, cancellationToken)).ToDto());

    /// <summary>Dismiss a concluded job (block-job-dismiss; jobs started with autoDismiss false).</summary>
    /// <remarks>It leaves the list; GET /api/v1/jobs?include=history still shows it.</remarks>
    public static async Task<Ok<JobDto>> DismissJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.DismissJobAsync(id, cancellationToken)).ToDto());

    /// <summary>Cancel a job (block-job-cancel).</summary>
    /// <remarks>
    /// In ready, a soft cancel (the default) finishes without pivot: a point-in-time copy, outcome
    /// cancelled with cancelMode soft. Anywhere else (also in pending), and with force, it aborts:
    /// outcome cancelled, cancelMode force, error "Operation canceled". A soft cancel of a paused job is refused (job-paused).
    /// </remarks>
    public static async Task<Ok<JobDto>> CancelJob(string id, BlockLayer layer, CancellationToken cancellationToken, CancelJobRequest? request = null) =>
        TypedResults.Ok((await layer.CancelJobAsync(id, request?.Force ?? false, cancellationToken)).ToDto());

    /// <summary>Change a job's speed and/or copy mode (block-job-set-speed, block-job-change).</summary>
    /// <remarks>
    /// All or nothing. Writes never go back from write-blocking: background → write-blocking or auto,
    /// auto (not yet switched) → write-blocking or background; anything else is refused with copy-mode-change.
    /// A switch to write-blocking is announced by a BLOCK_JOB_COPY_MODE_SWITCHED event (reason requested).
    /// </remarks>
    public static async Task<Ok<JobDto>> ChangeJob(string id, ChangeJobRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        if (request.Speed is null && request.CopyMode is null)
            return TypedResults.Ok(layer.GetJob(id).ToDto());
        var job = await layer.ChangeJobAsync(id, request.Speed, request.CopyMode, cancellationToken);
        return TypedResults.Ok(job.ToDto());
    }

    private static void CheckInclude(string? include)
    {
        if (include is not null && !s_includes.Contains(include))
            throw RequestValidationException.For("include", $"expected one of: {string.Join(", ", s_includes)}");
    }
}
