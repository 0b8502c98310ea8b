using BlockMirror.Api.Options;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Control-plane bodies are small JSON documents: anything over <see cref="JsonLimit"/> is refused
/// with 413 before it is read. The data endpoint (PUT .../data) gets the larger data limit.
/// Kestrel enforces the feature; the Content-Length check also covers hosts that do not (TestServer).
/// </summary>
public sealed class BodySizeLimitMiddleware(RequestDelegate next, IOptions<StorageOptions> storage)
{
    public const long JsonLimit = 1L << 20;

    public Task InvokeAsync(HttpContext context)
    {
        var isData = HttpMethods.IsPut(context.Request.Method) && context.Request.Path.Value?.EndsWith("/data", StringComparison.Ordinal) == true;
        var limit = isData ? storage.Value.MaxDataBodyBytes : JsonLimit;
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
            feature.MaxRequestBodySize = limit;
        if (context.Request.ContentLength > limit)
            throw new BadHttpRequestException("The request body is too large", StatusCodes.Status413PayloadTooLarge);
        return next(context);
    }
}
