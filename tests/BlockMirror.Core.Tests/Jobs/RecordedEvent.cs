using System.Text.Json;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>One published event, its data as JSON (as the host would serialize it).</summary>
public sealed record RecordedEvent(string Name, JsonElement Data)
{
    public string? Str(string member) => Data.TryGetProperty(member, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public long Num(string member) => Data.GetProperty(member).GetInt64();

    public bool Has(string member) => Data.TryGetProperty(member, out _);
}
