using BlockMirror.Api.Contracts;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core;
using BlockMirror.Core.Transactions;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/nodes/{node}/bitmaps: QEMU's block-dirty-bitmap-* commands.</summary>
public static class BitmapEndpoints
{
    public static RouteGroupBuilder MapBitmapEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/nodes/{node}/bitmaps").WithTags("Bitmaps");
        group.MapPost("/", AddBitmap).WithName(nameof(AddBitmap)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/", ListBitmaps).WithName(nameof(ListBitmaps)).ProducesProblem(404);
        group.MapGet("/{name}", GetBitmap).WithName(nameof(GetBitmap)).ProducesProblem(404);
        group.MapDelete("/{name}", RemoveBitmap).WithName(nameof(RemoveBitmap)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{name}/clear", ClearBitmap).WithName(nameof(ClearBitmap)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{name}/enable", EnableBitmap).WithName(nameof(EnableBitmap)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{name}/disable", DisableBitmap).WithName(nameof(DisableBitmap)).ProducesProblem(404).ProducesProblem(409);
        group.MapPost("/{name}/merge", MergeBitmaps).WithName(nameof(MergeBitmaps)).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        group.MapGet("/{name}/extents", GetDirtyExtents).WithName(nameof(GetDirtyExtents)).ProducesProblem(400).ProducesProblem(404);
        group.MapGet("/{name}/sha256", GetBitmapSha256).WithName(nameof(GetBitmapSha256)).ProducesProblem(404);
        return group;
    }

    /// <summary>Add a dirty bitmap to a node (block-dirty-bitmap-add).</summary>
    /// <remarks>From now on it records every write to the node (unless created disabled).</remarks>
    public static async Task<Created<BitmapDto>> AddBitmap(string node, CreateBitmapRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var name = RequestValidationException.Require(request.Name, "name");
        var action = new BitmapAddAction(node, name, request.Granularity, request.Persistent ?? false, request.Disabled ?? false);
        var bitmap = await layer.BitmapActionAsync(action, cancellationToken);
        return TypedResults.Created($"/api/v1/nodes/{Uri.EscapeDataString(node)}/bitmaps/{Uri.EscapeDataString(name)}",
            bitmap.ToDto(layer.GetNode(node)));
    }

    /// <summary>List a node's bitmaps.</summary>
    public static Ok<ItemsDto<BitmapDto>> ListBitmaps(string node, BlockLayer layer)
    {
        var n = layer.GetNode(node);
        return TypedResults.Ok(new ItemsDto<BitmapDto>([.. n.Bitmaps.Select(b => b.ToDto(n))]));
    }

    /// <summary>Get a bitmap (its dirty byte count and state).</summary>
    public static Ok<BitmapDto> GetBitmap(string node, string name, BlockLayer layer)
    {
        var n = layer.GetNode(node);
        return TypedResults.Ok(n.GetBitmap(name).ToDto(n));
    }

    /// <summary>Remove a bitmap (block-dirty-bitmap-remove).</summary>
    /// <remarks>Refused while busy or read-only; an inconsistent bitmap can always be removed.</remarks>
    public static async Task<NoContent> RemoveBitmap(string node, string name, BlockLayer layer, CancellationToken cancellationToken)
    {
        await layer.RunOneActionAsync<object?>(new BitmapRemoveAction(node, name), cancellationToken);
        return TypedResults.NoContent();
    }

    /// <summary>Clear a bitmap: nothing dirty (block-dirty-bitmap-clear).</summary>
    public static Task<Ok<BitmapDto>> ClearBitmap(string node, string name, BlockLayer layer, CancellationToken cancellationToken) =>
        RunAsync(layer, node, new BitmapClearAction(node, name), cancellationToken);

    /// <summary>Enable a bitmap: it records writes again (block-dirty-bitmap-enable).</summary>
    public static Task<Ok<BitmapDto>> EnableBitmap(string node, string name, BlockLayer layer, CancellationToken cancellationToken) =>
        RunAsync(layer, node, new BitmapEnableAction(node, name, enable: true), cancellationToken);

    /// <summary>Disable a bitmap: it stops recording writes (block-dirty-bitmap-disable).</summary>
    public static Task<Ok<BitmapDto>> DisableBitmap(string node, string name, BlockLayer layer, CancellationToken cancellationToken) =>
        RunAsync(layer, node, new BitmapEnableAction(node, name, enable: false), cancellationToken);

    /// <summary>Merge bitmaps into this one (block-dirty-bitmap-merge).</summary>
    /// <remarks>ORs every source (any granularity, a node of the same size) into this bitmap; on a refusal it is unchanged.</remarks>
    public static Task<Ok<BitmapDto>> MergeBitmaps(string node, string name, MergeBitmapsRequest request, BlockLayer layer, CancellationToken cancellationToken)
    {
        var sources = RequestValidationException.Require(request.Sources, "sources");
        return RunAsync(layer, node, new BitmapMergeAction(node, name, ToSources(sources)), cancellationToken);
    }

    internal static List<BitmapSource> ToSources(IReadOnlyList<BitmapSourceDto> sources) =>
        [.. sources.Select((s, i) => new BitmapSource(s?.Node, RequestValidationException.Require(s?.Name, $"sources[{i}].name")))];

    /// <summary>Get a bitmap's dirty ranges: coalesced, in order, clipped to the query range.</summary>
    /// <param name="offset">First byte (default 0; an integer, or a size such as 1M).</param>
    /// <param name="length">Bytes to look at (default: to the end of the node).</param>
    public static Ok<ItemsDto<DirtyExtentDto>> GetDirtyExtents(string node, string name, BlockLayer layer, ByteCount? offset = null, ByteCount? length = null)
    {
        var n = layer.GetNode(node);
        var bitmap = n.GetBitmap(name);
        var start = offset?.Value ?? 0;
        var len = length?.Value ?? Math.Max(0, n.Size - Math.Max(0, start));
        n.CheckRange(start, len);
        return TypedResults.Ok(new ItemsDto<DirtyExtentDto>([.. bitmap.GetExtents(start, len).Select(e => new DirtyExtentDto(e.Offset, e.Length))]));
    }

    /// <summary>Get the SHA-256 of a bitmap's content (to compare two bitmaps).</summary>
    public static Ok<Sha256Dto> GetBitmapSha256(string node, string name, BlockLayer layer) =>
        TypedResults.Ok(new Sha256Dto(layer.GetNode(node).GetBitmap(name).Sha256Hex()));

    private static async Task<Ok<BitmapDto>> RunAsync(BlockLayer layer, string node, TransactionAction action, CancellationToken cancellationToken)
    {
        var bitmap = await layer.BitmapActionAsync(action, cancellationToken);
        return TypedResults.Ok(bitmap.ToDto(layer.GetNode(node)));
    }
}
