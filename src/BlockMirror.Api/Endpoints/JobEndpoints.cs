using BlockMirror.Api.Contracts;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Transactions;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/jobs: blockdev-mirror and the job verbs.</summary>
public static class JobEndpoints
{
    public static RouteGroupBuilder MapJobEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/jobs").WithTags("Jobs");
        group.MapPost("/mirror", StartMirror).WithName(nameof(StartMirror))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/", ListJobs).WithName(nameof(ListJobs));
        group.MapGet("/{id}", GetJob).WithName(nameof(GetJob)).ProducesProblem(404);
        group.MapPost("/{id}/pause", PauseJob).WithName(nameof(PauseJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/resume", ResumeJob).WithName(nameof(ResumeJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/complete", CompleteJob).WithName(nameof(CompleteJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/finalize", FinalizeJob).WithName(nameof(FinalizeJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/dismiss", DismissJob).WithName(nameof(DismissJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{id}/cancel", CancelJob).WithName(nameof(CancelJob)).ProducesProblem(404).ProducesProblem(409);
        group.MapPatch("/{id}", ChangeJob).WithName(nameof(ChangeJob)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        return group;
    }

    /// <summary>blockdev-mirror: validates synchronously (every refusal has its code), then the job runs in the background.</summary>
    public static async Task<Created<JobInfo>> StartMirror(MirrorJobRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var job = await layer.StartMirrorAsync(ToOptions(request), cancellationToken);
        var info = job.GetInfo();
        return TypedResults.Created($"/api/v1/jobs/{Uri.EscapeDataString(info.Id)}", info);
    }

    /// <summary>The request as the engine's options (defaults are QEMU's).</summary>
    public static MirrorOptions ToOptions(MirrorJobRequest request) => new()
    {
        Id = request.Id,
        Device = RequestValidationException.Require(request.Device, "device"),
        Target = RequestValidationException.Require(request.Target, "target"),
        Sync = request.Sync ?? MirrorSyncMode.Full,
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

    /// <summary>Jobs not dismissed; <c>?include=dismissed</c> adds the history.</summary>
    public static Ok<ItemsDto<JobInfo>> ListJobs(BlockLayer layer, string? include = null)
    {
        var jobs = include == "dismissed" ? layer.JobHistory.Concat(layer.Jobs) : layer.Jobs;
        return TypedResults.Ok(new ItemsDto<JobInfo>([.. jobs.Select(j => j.GetInfo()).OrderBy(j => j.CreatedAt)]));
    }

    public static Ok<JobInfo> GetJob(string id, BlockLayer layer, string? include = null) =>
        TypedResults.Ok(layer.GetJob(id, include == "dismissed").GetInfo());

    public static async Task<Ok<JobInfo>> PauseJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.PauseJobAsync(id, cancellationToken)).GetInfo());

    public static async Task<Ok<JobInfo>> ResumeJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.ResumeJobAsync(id, cancellationToken)).GetInfo());

    public static async Task<Ok<JobInfo>> CompleteJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.CompleteJobAsync(id, cancellationToken)).GetInfo());

    public static async Task<Ok<JobInfo>> FinalizeJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.FinalizeJobAsync(id, cancellationToken)).GetInfo());

    public static async Task<Ok<JobInfo>> DismissJob(string id, BlockLayer layer, CancellationToken cancellationToken) =>
        TypedResults.Ok((await layer.DismissJobAsync(id, cancellationToken)).GetInfo());

    /// <summary>Outside ready (also in pending): abort. In ready: finish without pivot (a point-in-time copy) unless <c>force</c>. A soft cancel of a paused job is refused.</summary>
    public static async Task<Ok<JobInfo>> CancelJob(string id, BlockLayer layer, CancellationToken cancellationToken, CancelJobRequest? request = null) =>
        TypedResults.Ok((await layer.CancelJobAsync(id, request?.Force ?? false, cancellationToken)).GetInfo());

    /// <summary>set-speed and/or block-job-change (background → write-blocking), all or nothing.</summary>
    public static async Task<Ok<JobInfo>> ChangeJob(string id, ChangeJobRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        if (request.Speed is null && request.CopyMode is null)
            return TypedResults.Ok(layer.GetJob(id).GetInfo());
        var job = await layer.ChangeJobAsync(id, request.Speed, request.CopyMode, cancellationToken);
        return TypedResults.Ok(job.GetInfo());
    }
}
