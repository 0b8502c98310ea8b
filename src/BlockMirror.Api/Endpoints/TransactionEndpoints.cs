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

    /// <summary>Run several actions all or nothing (QMP's transaction).</summary>
    /// <remarks>
    /// Prepares every action in order with data writes quiesced, so they take effect at one instant
    /// with no write in between; the first refusal aborts the prepared ones and is returned with its <c>actionIndex</c>.
    /// </remarks>
    public static async Task<Ok<TransactionResultDto>> RunTransaction(TransactionRequest request, BlockLayer layer, IServiceProvider services, CancellationToken cancellationToken)
    {
        var dtos = RequestValidationException.Require(request.Actions, "actions");
        CheckMembers(dtos);
        var actions = new List<TransactionAction>(dtos.Count);
        for (var i = 0; i < dtos.Count; i++)
            actions.Add(ToAction(dtos[i], i, services));
        var results = await layer.TransactionAsync(actions, cancellationToken);
        return TypedResults.Ok(new TransactionResultDto([.. results.Select((r, i) => ToResult(r, dtos[i], layer))]));
    }

    /// <summary>The members each action type takes (QMP gives each its own schema; the others are refused).</summary>
    private static readonly Dictionary<string, string[]> s_members = new()
    {
        ["bitmap-add"] = ["node", "name", "granularity", "persistent", "disabled"],
        ["bitmap-remove"] = ["node", "name"],
        ["bitmap-clear"] = ["node", "name"],
        ["bitmap-enable"] = ["node", "name"],
        ["bitmap-disable"] = ["node", "name"],
        ["bitmap-merge"] = ["node", "name", "sources"],
        ["mirror-start"] = ["job"],
    };

    /// <summary>
    /// Every action's type and members, all actions at once and before any runs: an unknown type
    /// lists the known ones; a member its type does not take is unknown-field, a missing one it
    /// needs invalid-request.
    /// </summary>
    private static void CheckMembers(IReadOnlyList<TransactionActionDto> dtos)
    {
        var errors = new Dictionary<string, string[]>();
        var unknown = new Dictionary<string, string[]>();
        for (var i = 0; i < dtos.Count; i++)
        {
            var a = dtos[i];
            if (a?.Type is not { } type)
                continue;
            if (!s_members.TryGetValue(type, out var members))
            {
                errors[$"actions[{i}].type"] = [$"expected one of: {string.Join(", ", s_members.Keys)}; got {System.Text.Json.JsonSerializer.Serialize(type)}"];
                continue;
            }
            foreach (var (member, value) in Members(a))
            {
                var given = value is not null;
                if (given && !members.Contains(member))
                    unknown[$"actions[{i}].{member}"] = [$"not a member of a {type} action (it takes: type, {string.Join(", ", members)})"];
                else if (!given && members.Contains(member) && member is "node" or "name" or "sources" or "job")
                    errors[$"actions[{i}].{member}"] = [$"required by a {type} action"];
            }
        }
        if (unknown.Count > 0)
            throw new RequestValidationException(unknown, RequestValidationException.UnknownField);
        if (errors.Count > 0)
            throw new RequestValidationException(errors);
    }

    private static IEnumerable<(string Member, object? Value)> Members(TransactionActionDto a) =>
    [
        ("node", a.Node), ("name", a.Name), ("granularity", a.Granularity), ("persistent", a.Persistent),
        ("disabled", a.Disabled), ("sources", a.Sources), ("job", a.Job),
    ];

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
                ?? throw RequestValidationException.For($"actions[{index}].type", "mirror-start is not available"),
            _ => throw RequestValidationException.For($"actions[{index}].type", $"Unknown action type '{type}'"),
        };
    }

    private static object? ToResult(object? result, TransactionActionDto dto, BlockLayer layer) => result switch
    {
        DirtyBitmap b when layer.FindNode(dto.Node ?? "") is { } node => b.ToDto(node),
        Core.Jobs.Job j => j.ToDto(),
        null => null,
        _ => result,
    };
}
