using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;
using BlockMirror.Api.Infrastructure;

namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/transactions (QMP's transaction): every action takes effect at one instant, or none does.</summary>
/// <param name="Actions">The actions, prepared in order; the first refusal aborts them all and is returned with its actionIndex.</param>
public sealed record TransactionRequest([property: Required] IReadOnlyList<TransactionActionDto>? Actions);

/// <summary>
/// One action of a transaction. Each type takes its own members (any other is refused as unknown):
/// bitmap-add (node, name, granularity?, persistent?, disabled?), bitmap-remove, bitmap-clear,
/// bitmap-enable, bitmap-disable (node, name), bitmap-merge (node, name, sources), mirror-start (job).
/// </summary>
/// <param name="Type">bitmap-add, bitmap-remove, bitmap-clear, bitmap-enable, bitmap-disable, bitmap-merge or mirror-start.</param>
/// <param name="Node">bitmap-*: the bitmap's node.</param>
/// <param name="Name">bitmap-*: the bitmap's name.</param>
/// <param name="Granularity">bitmap-add: bytes per bit (an integer, or a size such as 64K); default 64 KiB.</param>
/// <param name="Persistent">bitmap-add: survives a restart.</param>
/// <param name="Disabled">bitmap-add: created not recording.</param>
/// <param name="Sources">bitmap-merge: the bitmaps ORed into node/name.</param>
/// <param name="Job">mirror-start: the body of POST /api/v1/jobs/mirror.</param>
public sealed record TransactionActionDto(
    [property: Required] string? Type,
    string? Node,
    string? Name,
    [property: JsonConverter(typeof(ByteCountJsonConverter))] long? Granularity,
    bool? Persistent,
    bool? Disabled,
    IReadOnlyList<BitmapSourceDto>? Sources,
    MirrorJobRequest? Job);

/// <summary>Response of a committed transaction.</summary>
/// <param name="Results">One result per action, in order: the Bitmap for bitmap actions (null for bitmap-remove), the Job for mirror-start.</param>
public sealed record TransactionResultDto(IReadOnlyList<object?> Results);
