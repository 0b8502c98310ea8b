using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Makes a <see cref="StrictEnumConverter{T}"/> for every enum (and, through the serializer, its nullable).</summary>
public sealed class StrictEnumConverterFactory : JsonConverterFactory
{
    public override bool CanConvert(Type typeToConvert) => typeToConvert.IsEnum;

    public override JsonConverter? CreateConverter(Type typeToConvert, JsonSerializerOptions options) =>
        (JsonConverter?)Activator.CreateInstance(typeof(StrictEnumConverter<>).MakeGenericType(typeToConvert));
}
