namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Runs <see cref="RequiredMembers"/> on every request contract an endpoint received, before the
/// endpoint: a refused request has changed nothing and looked at no state.
/// </summary>
public sealed class RequestValidationFilter : IEndpointFilter
{
    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var errors = new Dictionary<string, string[]>();
        foreach (var argument in context.Arguments)
            RequiredMembers.Check(argument, "", errors);
        if (errors.Count > 0)
            throw new RequestValidationException(errors);
        return next(context);
    }
}
