namespace BlockMirror.Api.Infrastructure;

/// <summary>A schema violation in a request body: 400 <c>invalid-request</c> with the <c>errors</c> map.</summary>
public sealed class RequestValidationException(IDictionary<string, string[]> errors)
    : Exception("One or more validation errors occurred.")
{
    public IDictionary<string, string[]> Errors { get; } = errors;

    /// <summary>Returns <paramref name="value"/>, or throws naming <paramref name="field"/> as required.</summary>
    public static T Require<T>(T? value, string field) where T : class =>
        value ?? throw new RequestValidationException(new Dictionary<string, string[]> { [field] = [$"The {field} field is required."] });

    /// <summary>Returns <paramref name="value"/>, or throws naming <paramref name="field"/> as required.</summary>
    public static T Require<T>(T? value, string field) where T : struct =>
        value ?? throw new RequestValidationException(new Dictionary<string, string[]> { [field] = [$"The {field} field is required."] });
}
