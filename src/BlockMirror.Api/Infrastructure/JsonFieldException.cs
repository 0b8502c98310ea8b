using System.Text.Json;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// A request member's value of the wrong kind, thrown by the strict converters with a message for
/// the user ("expected ..., got ..."). System.Text.Json adds the member's path and rethrows this
/// same instance, so <see cref="RequestProblems"/> can tell it from the serializer's own messages.
/// </summary>
public sealed class JsonFieldException(string message) : JsonException(message)
{
    public static JsonFieldException Expected(string expected, ref Utf8JsonReader reader) =>
        new($"expected {expected}, got {JsonTokenText.Of(ref reader)}");
}
