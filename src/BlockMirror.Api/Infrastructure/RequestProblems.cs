using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http.Json;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The one place where a request the framework could not bind becomes a problem that names the
/// field: JSON the serializer refused (malformed, a member of the wrong kind, an unknown member),
/// a missing body, a query parameter missing or not parseable. Each becomes a
/// <see cref="RequestValidationException"/> with the <c>errors</c> map; nothing here looks at state.
/// </summary>
public static partial class RequestProblems
{
    /// <summary>The key of the errors map for the body as a whole.</summary>
    public const string BodyField = "body";

    /// <summary>The problem for <paramref name="exception"/>, or null when it is not about reading the request.</summary>
    public static RequestValidationException? From(Exception exception, HttpContext context) => exception switch
    {
        RequestValidationException v => v,
        BadHttpRequestException { InnerException: JsonException j } => FromJson(j, context),
        JsonException j => FromJson(j, context),
        BadHttpRequestException b => FromBinding(b),
        _ => null,
    };

    private static RequestValidationException FromJson(JsonException e, HttpContext context)
    {
        var path = ParsePath(e.Path);
        var field = FieldName(path);
        if (e.InnerException is JsonException reader)
        {
            // The reader's own error: the body is not JSON, whatever member it was in. Its position is what helps.
            var position = $"line {(e.LineNumber ?? 0) + 1}, position {(e.BytePositionInLine ?? 0) + 1}";
            var where = path.Count == 0 ? "" : $" (in '{field}')";
            return RequestValidationException.For(BodyField, $"malformed JSON at {position}{where}: {StripPosition(reader.Message)}");
        }
        var options = context.RequestServices.GetService<IOptions<JsonOptions>>()?.Value.SerializerOptions;
        var bodyType = BodyType(context);
        var parent = options is null || bodyType is null ? null : Walk(options, bodyType, path.Count == 0 ? path : path[..^1]);
        if (path.Count > 0 && path[^1] is string member && parent is { Kind: JsonTypeInfoKind.Object } && !HasMember(parent, member))
            return UnknownMember(field, member, parent);
        if (e is JsonFieldException)
            return RequestValidationException.For(field, e.Message);
        var type = options is null || bodyType is null ? null : Walk(options, bodyType, path);
        return RequestValidationException.For(field, type is null ? "invalid value" : $"expected {Expected(type)}");
    }

    /// <summary>
    /// The type the endpoint reads its body as. The exception handler runs with the endpoint
    /// cleared; the feature it sets keeps the endpoint that threw.
    /// </summary>
    private static Type? BodyType(HttpContext context)
    {
        var endpoint = context.Features.Get<Microsoft.AspNetCore.Diagnostics.IExceptionHandlerFeature>()?.Endpoint ?? context.GetEndpoint();
        return endpoint?.Metadata.GetMetadata<Microsoft.AspNetCore.Http.Metadata.IAcceptsMetadata>()?.RequestType;
    }

    private static RequestValidationException UnknownMember(string field, string member, JsonTypeInfo parent)
    {
        var suggestion = QemuSpellings.Suggest(member, parent);
        var hint = suggestion is null
            ? $"members here: {string.Join(", ", parent.Properties.Select(p => p.Name))}"
            : QemuSpellings.IsQemuStyle(member)
                ? $"did you mean '{suggestion}'? ('{member}' is QEMU's spelling)"
                : $"did you mean '{suggestion}'?";
        var detail = $"Unknown member '{field}' in the request; {hint}";
        return new RequestValidationException(new Dictionary<string, string[]> { [field] = [$"unknown member; {hint}"] },
            RequestValidationException.UnknownField, detail);
    }

    /// <summary>Missing or unparseable parameters, and a missing body (the framework's binding failures).</summary>
    private static RequestValidationException FromBinding(BadHttpRequestException b)
    {
        if (NoBody().IsMatch(b.Message))
            return RequestValidationException.For(BodyField, "required: a JSON object");
        if (RequiredParameter().Match(b.Message) is { Success: true } required)
        {
            return required.Groups["source"].Value == "body"
                ? RequestValidationException.For(BodyField, "required: a JSON object")
                : RequestValidationException.For(required.Groups["name"].Value, $"required: {ExpectedOfParameter(required.Groups["type"].Value)}");
        }
        if (FailedBinding().Match(b.Message) is { Success: true } failed)
        {
            var got = JsonSerializer.Serialize(failed.Groups["value"].Value);
            return RequestValidationException.For(failed.Groups["name"].Value, $"expected {ExpectedOfParameter(failed.Groups["type"].Value)}, got {got}");
        }
        return RequestValidationException.For(BodyField, b.Message);
    }

    private static string ExpectedOfParameter(string typeName) => typeName.TrimEnd('?') switch
    {
        nameof(ByteCount) => ByteCount.Syntax,
        "bool" or "Boolean" => "true or false",
        "long" or "int" or "Int64" or "Int32" => "an integer",
        _ => "a value",
    };

    /// <summary>What a member of this type accepts, in words.</summary>
    private static string Expected(JsonTypeInfo info)
    {
        var type = Nullable.GetUnderlyingType(info.Type) ?? info.Type;
        if (type.IsEnum)
            return $"one of: {string.Join(", ", Enum.GetNames(type).Select(JsonNamingPolicy.KebabCaseLower.ConvertName))}";
        return type == typeof(string) ? "a string"
            : type == typeof(bool) ? "true or false"
            : type == typeof(long) ? ByteCount.Syntax
            : info.Kind == JsonTypeInfoKind.Object ? "an object"
            : info.Kind == JsonTypeInfoKind.Enumerable ? "an array"
            : $"a {type.Name}";
    }

    /// <summary>The type at a path from the body's type, or null where the path leaves what is declared.</summary>
    private static JsonTypeInfo? Walk(JsonSerializerOptions options, Type root, List<object> path)
    {
        var info = options.GetTypeInfo(root);
        foreach (var segment in path)
        {
            Type? next = segment switch
            {
                int when info.Kind == JsonTypeInfoKind.Enumerable => info.ElementType,
                string name when info.Kind == JsonTypeInfoKind.Object => Member(info, name)?.PropertyType,
                _ => null,
            };
            if (next is null)
                return null;
            info = options.GetTypeInfo(next);
        }
        return info;
    }

    // Web defaults bind member names case-insensitively.
    private static JsonPropertyInfo? Member(JsonTypeInfo info, string name) =>
        info.Properties.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase));

    private static bool HasMember(JsonTypeInfo info, string name) => Member(info, name) is not null;

    /// <summary>"$.actions[0].job['bitmap-mode']" as segments: names (string) and indexes (int).</summary>
    private static List<object> ParsePath(string? path)
    {
        var segments = new List<object>();
        if (string.IsNullOrEmpty(path))
            return segments;
        foreach (Match m in PathSegment().Matches(path))
        {
            if (m.Groups["index"].Success)
                segments.Add(int.Parse(m.Groups["index"].Value, System.Globalization.CultureInfo.InvariantCulture));
            else
                segments.Add(m.Groups["quoted"].Success ? m.Groups["quoted"].Value.Replace("\\'", "'") : m.Groups["name"].Value);
        }
        return segments;
    }

    /// <summary>The errors map key: "create.size", "sources[1].name"; the body itself is "body".</summary>
    public static string FieldName(IReadOnlyList<object> path)
    {
        if (path.Count == 0)
            return BodyField;
        var text = new System.Text.StringBuilder();
        foreach (var segment in path)
        {
            if (segment is int index)
                text.Append('[').Append(index).Append(']');
            else
                text.Append(text.Length == 0 ? "" : ".").Append(segment);
        }
        return text.ToString();
    }

    private static string StripPosition(string message)
    {
        var cut = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut < 0 ? message : message[..cut]).Trim();
    }

    [GeneratedRegex(@"\.(?<name>[^.\[]+)|\['(?<quoted>(?:[^'\\]|\\.)*)'\]|\[(?<index>[0-9]+)\]")]
    private static partial Regex PathSegment();

    // RequestDelegateFactory's messages (ThrowOnBadRequest): the only place these texts are read.
    [GeneratedRegex("^Required parameter \"(?<type>[^\"]+) (?<name>[^\" ]+)\" was not provided from (?<source>[^.]+)\\.")]
    private static partial Regex RequiredParameter();

    [GeneratedRegex("^Implicit body inferred for parameter \"[^\"]+\" but no body was provided")]
    private static partial Regex NoBody();

    [GeneratedRegex("^Failed to bind parameter \"(?<type>[^\"]+) (?<name>[^\" ]+)\" from \"(?<value>.*)\"\\.$", RegexOptions.Singleline)]
    private static partial Regex FailedBinding();
}
