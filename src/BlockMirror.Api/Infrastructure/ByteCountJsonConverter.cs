using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// A byte-count member (sizes, granularities, buffer sizes, speeds, offsets, lengths): a JSON
/// integer, or a string in the <see cref="ByteCount"/> syntax (<c>"64M"</c>), as users type sizes.
/// Anything else is refused naming the member, never silently truncated. Written as an integer.
/// </summary>
public sealed class ByteCountJsonConverter : JsonConverter<long?>
{
    public override long? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out var number))
            return number;
        if (reader.TokenType == JsonTokenType.String && ByteCount.TryParseBytes(reader.GetString(), out var bytes))
            return bytes;
        throw JsonFieldException.Expected(ByteCount.Syntax, ref reader);
    }

    public override void Write(Utf8JsonWriter writer, long? value, JsonSerializerOptions options)
    {
        if (value is { } v)
            writer.WriteNumberValue(v);
        else
            writer.WriteNullValue();
    }
}
