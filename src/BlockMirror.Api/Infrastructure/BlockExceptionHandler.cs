using BlockMirror.Core;
using BlockMirror.Core.Transactions;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Mvc;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Turns every exception a handler lets through into a problem document: block-layer refusals
/// keep their code and QEMU sentence; requests that cannot be read become 400 with the field named
/// (<see cref="RequestProblems"/>: <c>invalid-request</c> or <c>unknown-field</c> and the <c>errors</c>
/// map), a body of the wrong type 415 <c>unsupported-media-type</c>, oversized bodies 413
/// <c>body-too-large</c>; a database or bitmap journal that cannot be written 503
/// <c>storage-unavailable</c> (the operations that store refuse before anything changes, see
/// <see cref="StorageFailures"/>). Nothing a client sends ends as a bare 500.
/// </summary>
public sealed class BlockExceptionHandler(IProblemDetailsService problems, ILogger<BlockExceptionHandler> logger) : IExceptionHandler
{
    public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
    {
        var (status, code, detail, extra) = Classify(exception, httpContext);
        if (status >= 500)
            logger.LogError(exception, "Unhandled exception on {Path}", httpContext.Request.Path);
        httpContext.Response.StatusCode = status;
        var problem = new ProblemDetails { Status = status, Detail = detail };
        problem.Extensions["code"] = code;
        foreach (var (k, v) in extra)
            problem.Extensions[k] = v;
        return await problems.TryWriteAsync(new ProblemDetailsContext
        {
            HttpContext = httpContext,
            ProblemDetails = problem,
            Exception = exception,
        });
    }

    private static (int Status, string Code, string Detail, Dictionary<string, object?> Extra) Classify(Exception exception, HttpContext context)
    {
        if (StorageFailures.IsStorageFailure(exception))
        {
            return (StatusCodes.Status503ServiceUnavailable, "storage-unavailable",
                $"{StorageFailures.Describe(exception)}; nothing of the request took effect", []);
        }
        if (exception is not BadHttpRequestException { StatusCode: not StatusCodes.Status400BadRequest } && RequestProblems.From(exception, context) is { } request)
            return (400, request.Code, request.Message, new() { ["errors"] = request.Errors });
        switch (exception)
        {
            case BlockException e:
                return (ProblemCodes.StatusOf(e.Kind), e.Code, e.Message, []);
            case TransactionFailedException t:
                return (ProblemCodes.StatusOf(t.Error.Kind), t.Error.Code, t.Error.Message, new() { ["actionIndex"] = t.ActionIndex });
            case BadHttpRequestException b when b.StatusCode == StatusCodes.Status413PayloadTooLarge:
                return (413, "body-too-large", "The request body is too large", []);
            case UnsupportedMediaTypeException m:
                return (415, "unsupported-media-type", m.Message, []);
            case BadHttpRequestException b when b.StatusCode == StatusCodes.Status415UnsupportedMediaType:
                // The framework refuses a JSON body sent as another type.
                return (415, "unsupported-media-type", UnsupportedMediaTypeException.Describe("application/json", context.Request.ContentType), []);
            case BadHttpRequestException b:
                return (b.StatusCode is >= 400 and < 500 ? b.StatusCode : 400, "invalid-request", b.Message, []);
            case IOException io when io.GetType() == typeof(IOException) || io is EndOfStreamException:
                return (409, "io-error", $"I/O error: {io.Message}", []);
            default:
                return (500, "internal-error", "An unexpected error occurred", []);
        }
    }
}
