using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>A string member accepts only a JSON string (<c>"name": 5</c> is refused naming the member).</summary>
public sealed class StrictStringConverter : JsonConverter<string>
{
    public override string? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType == JsonTokenType.String ? reader.GetString() : throw JsonFieldException.Expected("a string", ref reader);

    public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) => writer.WriteStringValue(value);
}
