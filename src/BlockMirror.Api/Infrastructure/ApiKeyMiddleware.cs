using System.Security.Cryptography;
using System.Text;
using BlockMirror.Api.Options;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>With <c>Auth:ApiKeys</c> configured, every /api call needs <c>Authorization: Bearer &lt;key&gt;</c>.</summary>
public sealed class ApiKeyMiddleware(RequestDelegate next, IOptions<AuthOptions> options)
{
    private readonly byte[][] _keys = options.Value.ApiKeys.Where(k => !string.IsNullOrEmpty(k)).Select(Encoding.UTF8.GetBytes).ToArray();

    public async Task InvokeAsync(HttpContext context, IProblemDetailsService problems)
    {
        if (_keys.Length == 0 || !context.Request.Path.StartsWithSegments("/api") || Authorized(context))
        {
            await next(context);
            return;
        }
        context.Response.StatusCode = StatusCodes.Status401Unauthorized;
        context.Response.Headers.WWWAuthenticate = "Bearer";
        await problems.WriteAsync(new ProblemDetailsContext
        {
            HttpContext = context,
            ProblemDetails = { Status = 401, Detail = "A valid 'Authorization: Bearer <key>' header is required" },
        });
    }

    private bool Authorized(HttpContext context)
    {
        var header = context.Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
            return false;
        var presented = Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim());
        // Constant-time comparison against every key: no timing oracle on the key bytes.
        var ok = false;
        foreach (var key in _keys)
            ok |= CryptographicOperations.FixedTimeEquals(key, presented);
        return ok;
    }
}
