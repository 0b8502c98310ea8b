using BlockMirror.Api.Contracts;
using BlockMirror.Api.Infrastructure;
using BlockMirror.Core;
using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Transactions;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/transactions: several actions, all or nothing (QMP's transaction).</summary>
public static class TransactionEndpoints
{
    public static RouteGroupBuilder MapTransactionEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/transactions").WithTags("Transactions");
        group.MapPost("/", RunTransaction).WithName(nameof(RunTransaction))
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        return group;
    }

    /// <summary>
    /// Prepares every action in order with data writes quiesced; the first refusal aborts the
    /// prepared ones and is returned with its <c>actionIndex</c>.
    /// </summary>
    public static async Task<Ok<TransactionResultDto>> RunTransaction(TransactionRequest request, BlockLayer layer, IServiceProvider services, CancellationToken cancellationToken)
    {
        var dtos = RequestValidationException.Require(request.Actions, "actions");
        var actions = new List<TransactionAction>(dtos.Count);
        for (var i = 0; i < dtos.Count; i++)
            actions.Add(ToAction(dtos[i], i, services));
        var results = await layer.TransactionAsync(actions, cancellationToken);
        return TypedResults.Ok(new TransactionResultDto([.. results.Select((r, i) => ToResult(r, dtos[i], layer))]));
    }

    private static TransactionAction ToAction(TransactionActionDto? dto, int index, IServiceProvider services)
    {
        var a = RequestValidationException.Require(dto, $"actions[{index}]");
        var type = RequestValidationException.Require(a.Type, $"actions[{index}].type");
        string Node() => RequestValidationException.Require(a.Node, $"actions[{index}].node");
        string Name() => RequestValidationException.Require(a.Name, $"actions[{index}].name");
        return type switch
        {
            "bitmap-add" => new BitmapAddAction(Node(), Name(), a.Granularity, a.Persistent ?? false, a.Disabled ?? false),
            "bitmap-remove" => new BitmapRemoveAction(Node(), Name()),
            "bitmap-clear" => new BitmapClearAction(Node(), Name()),
            "bitmap-enable" => new BitmapEnableAction(Node(), Name(), enable: true),
            "bitmap-disable" => new BitmapEnableAction(Node(), Name(), enable: false),
            "bitmap-merge" => new BitmapMergeAction(Node(), Name(),
                BitmapEndpoints.ToSources(RequestValidationException.Require(a.Sources, $"actions[{index}].sources"))),
            "mirror-start" => services.GetService<ITransactionActionFactory>()?.CreateMirrorStart(
                    RequestValidationException.Require(a.Job, $"actions[{index}].job"))
                ?? throw new RequestValidationException(new Dictionary<string, string[]> { [$"actions[{index}].type"] = ["mirror-start is not available"] }),
            _ => throw new RequestValidationException(new Dictionary<string, string[]>
            {
                [$"actions[{index}].type"] = [$"Unknown action type '{type}'"],
            }),
        };
    }

    private static object? ToResult(object? result, TransactionActionDto dto, BlockLayer layer) => result switch
    {
        DirtyBitmap b when layer.FindNode(dto.Node ?? "") is { } node => b.ToDto(node),
        Core.Jobs.Job j => j.GetInfo(),
        null => null,
        _ => result,
    };
}
