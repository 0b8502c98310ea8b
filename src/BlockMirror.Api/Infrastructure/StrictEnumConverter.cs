using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// An enum as QEMU spells its values (lower-case, words joined by '-'): reads only those names
/// (case-insensitively, as before), no numbers; an unknown value is refused listing the accepted ones.
/// </summary>
public sealed class StrictEnumConverter<T> : JsonConverter<T> where T : struct, Enum
{
    private static readonly (T Value, string Name)[] s_names =
        [.. Enum.GetValues<T>().Select(v => (v, JsonNamingPolicy.KebabCaseLower.ConvertName(v.ToString())))];

    /// <summary>The accepted spellings, in declaration order.</summary>
    public static IReadOnlyList<string> Names { get; } = [.. s_names.Select(n => n.Name)];

    public override T Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
        {
            var text = reader.GetString();
            foreach (var (value, name) in s_names)
            {
                if (string.Equals(name, text, StringComparison.OrdinalIgnoreCase))
                    return value;
            }
        }
        throw JsonFieldException.Expected(ExpectedText(), ref reader);
    }

    public override void Write(Utf8JsonWriter writer, T value, JsonSerializerOptions options)
    {
        foreach (var (v, name) in s_names)
        {
            if (EqualityComparer<T>.Default.Equals(v, value))
            {
                writer.WriteStringValue(name);
                return;
            }
        }
        throw new JsonException($"{typeof(T).Name} has no value {value}");
    }

    /// <summary>"one of: full, top, none".</summary>
    public static string ExpectedText() => $"one of: {string.Join(", ", Names)}";
}
