namespace BlockMirror.Api.Contracts;

/// <summary>Body of POST /api/v1/transactions.</summary>
public sealed record TransactionRequest(IReadOnlyList<TransactionActionDto>? Actions);

/// <summary>
/// One action. <c>type</c>: bitmap-add, bitmap-remove, bitmap-clear, bitmap-enable,
/// bitmap-disable, bitmap-merge, mirror-start. Members apply per type.
/// </summary>
public sealed record TransactionActionDto(
    string? Type,
    string? Node,
    string? Name,
    long? Granularity,
    bool? Persistent,
    bool? Disabled,
    IReadOnlyList<BitmapSourceDto>? Sources,
    MirrorJobRequest? Job);

/// <summary>Response of a committed transaction: one result per action.</summary>
public sealed record TransactionResultDto(IReadOnlyList<object?> Results);
