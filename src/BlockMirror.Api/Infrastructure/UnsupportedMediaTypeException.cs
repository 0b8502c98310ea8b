namespace BlockMirror.Api.Infrastructure;

/// <summary>A body of a media type the endpoint does not read: 415 saying which type it expects.</summary>
public sealed class UnsupportedMediaTypeException(string expected, string? received) : Exception(Describe(expected, received))
{
    public static string Describe(string expected, string? received) =>
        string.IsNullOrEmpty(received)
            ? $"The request body must be sent as {expected}"
            : $"The request body must be sent as {expected}, not '{received}'";
}
