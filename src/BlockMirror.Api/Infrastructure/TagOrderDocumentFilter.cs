using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace BlockMirror.Api.Infrastructure;

/// <summary>The document's tags in <see cref="OpenApiSetup.Tags"/> order, with descriptions: Swagger UI shows the groups in this order.</summary>
public sealed class TagOrderDocumentFilter : IDocumentFilter
{
    public void Apply(OpenApiDocument swaggerDoc, DocumentFilterContext context)
    {
        var tags = new HashSet<OpenApiTag>();
        foreach (var (name, description) in OpenApiSetup.Tags)
            tags.Add(new OpenApiTag { Name = name, Description = description });
        swaggerDoc.Tags = tags;
    }
}
