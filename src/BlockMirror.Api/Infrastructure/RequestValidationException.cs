namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// A request that cannot be understood, found before anything runs: 400 with <see cref="Code"/>
/// (<c>invalid-request</c>, or <c>unknown-field</c> for a member the request type does not have) and
/// the <c>errors</c> map naming each field ("create.size", "actions[0].job.sync", "length") with
/// what was wrong with it.
/// </summary>
public sealed class RequestValidationException(IDictionary<string, string[]> errors, string code = RequestValidationException.InvalidRequest, string? detail = null)
    : Exception(detail ?? Summarize(errors))
{
    public const string InvalidRequest = "invalid-request";
    public const string UnknownField = "unknown-field";

    public IDictionary<string, string[]> Errors { get; } = errors;

    public string Code { get; } = code;

    /// <summary>One field's problem.</summary>
    public static RequestValidationException For(string field, string message, string code = InvalidRequest) =>
        new(new Dictionary<string, string[]> { [field] = [message] }, code);

    /// <summary>Returns <paramref name="value"/>, or throws naming <paramref name="field"/> as required.</summary>
    public static T Require<T>(T? value, string field) where T : class =>
        value ?? throw For(field, RequiredMessage);

    /// <summary>Returns <paramref name="value"/>, or throws naming <paramref name="field"/> as required.</summary>
    public static T Require<T>(T? value, string field) where T : struct =>
        value ?? throw For(field, RequiredMessage);

    public const string RequiredMessage = "required";

    /// <summary>The detail sentence: the field and its problem, or which fields are wrong.</summary>
    private static string Summarize(IDictionary<string, string[]> errors) => errors.Count switch
    {
        0 => "The request could not be processed",
        1 => $"Invalid '{errors.Keys.First()}': {string.Join("; ", errors.Values.First())}",
        _ => $"Invalid fields: {string.Join(", ", errors.Keys.Select(k => $"'{k}'"))}",
    };
}
