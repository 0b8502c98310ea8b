using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Documents the raw body of endpoints marked <see cref="OctetStreamBody"/>.</summary>
public sealed class OctetStreamBodyOperationFilter : IOperationFilter
{
    public void Apply(OpenApiOperation operation, OperationFilterContext context)
    {
        if (!context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<OctetStreamBody>().Any())
            return;
        operation.RequestBody = new OpenApiRequestBody
        {
            Required = true,
            Description = "The bytes, as application/octet-stream (another type is refused with 415).",
            Content = new Dictionary<string, OpenApiMediaType>
            {
                ["application/octet-stream"] = new() { Schema = new OpenApiSchema { Type = JsonSchemaType.String, Format = "binary" } },
            },
        };
    }
}
