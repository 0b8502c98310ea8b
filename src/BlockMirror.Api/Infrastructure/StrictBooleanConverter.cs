using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>A boolean member accepts only <c>true</c> or <c>false</c> (also used for <c>bool?</c>).</summary>
public sealed class StrictBooleanConverter : JsonConverter<bool>
{
    public override bool Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.True => true,
        JsonTokenType.False => false,
        _ => throw JsonFieldException.Expected("true or false", ref reader),
    };

    public override void Write(Utf8JsonWriter writer, bool value, JsonSerializerOptions options) => writer.WriteBooleanValue(value);
}
