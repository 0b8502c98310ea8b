using System.Text.Json;

namespace BlockMirror.Api.Infrastructure;

/// <summary>What a JSON token was, in the words an error message uses ("got ...").</summary>
public static class JsonTokenText
{
    private const int MaxShown = 40;

    public static string Of(ref Utf8JsonReader reader) => reader.TokenType switch
    {
        JsonTokenType.String => Quote(reader.GetString() ?? ""),
        JsonTokenType.Number => System.Text.Encoding.UTF8.GetString(reader.HasValueSequence ? System.Buffers.BuffersExtensions.ToArray(reader.ValueSequence) : reader.ValueSpan),
        JsonTokenType.True => "true",
        JsonTokenType.False => "false",
        JsonTokenType.Null => "null",
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        _ => reader.TokenType.ToString(),
    };

    private static string Quote(string text) =>
        JsonSerializer.Serialize(text.Length > MaxShown ? text[..MaxShown] + "…" : text);
}
