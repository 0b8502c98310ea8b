using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockMirror.Api.Infrastructure;

/// <summary>One JSON configuration for requests, responses and event bodies.</summary>
public static class JsonSetup
{
    public static void Configure(JsonSerializerOptions options)
    {
        options.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
        options.DefaultIgnoreCondition = JsonIgnoreCondition.Never;
        // Strict like QMP: a value of the wrong kind is refused naming the member and what was
        // expected (the converters' messages reach the problem document via RequestProblems).
        // Enum values are QEMU's spellings: lower-case, words joined by '-'.
        options.Converters.Add(new StrictEnumConverterFactory());
        options.Converters.Add(new StrictStringConverter());
        options.Converters.Add(new StrictBooleanConverter());
        options.NumberHandling = JsonNumberHandling.Strict;
        options.AllowTrailingCommas = false;
        // An unknown member is refused (400 unknown-field), as QMP refuses unknown arguments: a
        // misspelt or QEMU-spelt option (bitmap-mode) must not silently fall back to a default.
        options.UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow;
    }

    public static JsonSerializerOptions Create()
    {
        var o = new JsonSerializerOptions(JsonSerializerDefaults.Web);
        Configure(o);
        return o;
    }
}
