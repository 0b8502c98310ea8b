namespace BlockMirror.Api.Contracts;

/// <summary>A list response: <c>{ "items": [...] }</c>.</summary>
/// <param name="Items">The listed resources.</param>
public sealed record ItemsDto<T>(IReadOnlyList<T> Items);
