using BlockMirror.Core;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Maps block-layer refusals and bare statuses to the stable <c>code</c> of a problem document.</summary>
public static class ProblemCodes
{
    public static int StatusOf(BlockErrorKind kind) => kind switch
    {
        BlockErrorKind.Invalid => StatusCodes.Status400BadRequest,
        BlockErrorKind.NotFound => StatusCodes.Status404NotFound,
        _ => StatusCodes.Status409Conflict,
    };

    /// <summary>The code for a problem that carries none (framework-generated 400/404/405/413…).</summary>
    public static string DefaultCode(int status) => status switch
    {
        400 => "invalid-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        409 => "conflict",
        413 => "body-too-large",
        415 => "unsupported-media-type",
        _ => "internal-error",
    };

    /// <summary>A sentence for framework-generated problems that carry no detail.</summary>
    public static string DefaultDetail(int status, HttpContext context) => status switch
    {
        404 => $"No resource at '{context.Request.Path}'",
        405 => $"Method {context.Request.Method} is not allowed on '{context.Request.Path}'",
        413 => "The request body is too large",
        // Routing refuses a body whose type an endpoint does not accept; every body but PUT .../data
        // (which checks its own) is JSON.
        415 => UnsupportedMediaTypeException.Describe("application/json", context.Request.ContentType),
        401 => "A valid 'Authorization: Bearer <key>' header is required",
        _ => "The request could not be processed",
    };
}
