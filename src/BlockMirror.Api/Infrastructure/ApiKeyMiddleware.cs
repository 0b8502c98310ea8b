using System.Security.Cryptography;
using System.Text;
using BlockMirror.Api.Options;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// With <c>Auth:ApiKeys</c> configured, every /api call needs <c>Authorization: Bearer &lt;key&gt;</c>, and
/// so do /metrics (job ids, node and bitmap names, export names) and /swagger unless
/// <c>Auth:AllowAnonymousMetrics</c> / <c>Auth:AllowAnonymousSwagger</c> open them. /healthz and the
/// dashboard's static files stay open (they hold no data; the dashboard asks for a key).
/// </summary>
public sealed class ApiKeyMiddleware(RequestDelegate next, IOptions<AuthOptions> options)
{
    private readonly byte[][] _keys = options.Value.ApiKeys.Where(k => !string.IsNullOrEmpty(k)).Select(Encoding.UTF8.GetBytes).ToArray();
    private readonly bool _anonymousMetrics = options.Value.AllowAnonymousMetrics;
    private readonly bool _anonymousSwagger = options.Value.AllowAnonymousSwagger;

    public async Task InvokeAsync(HttpContext context, IProblemDetailsService problems)
    {
        if (_keys.Length == 0 || !RequiresKey(context.Request.Path) || Authorized(context))
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

    private bool RequiresKey(PathString path) =>
        path.StartsWithSegments("/api")
        || (!_anonymousMetrics && path.StartsWithSegments(ObservabilityRegistration.MetricsPath))
        || (!_anonymousSwagger && path.StartsWithSegments("/swagger"));

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
