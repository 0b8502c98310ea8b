using Microsoft.AspNetCore.Mvc.ApiExplorer;
using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The OpenAPI document (/swagger/v1/swagger.json, checked in as openapi/openapi.json) as a user
/// reads it: operations in the order a user works (nodes, bitmaps, jobs, exports, transactions,
/// events), every schema member described from the contracts' XML comments, request examples that
/// work when sent as they are, and the Bearer scheme so Swagger UI's "Authorize" sends the key.
/// </summary>
public static class OpenApiSetup
{
    /// <summary>Tags in the order a user works, with what each group is for.</summary>
    public static readonly (string Name, string Description)[] Tags =
    [
        ("Nodes", "Images the service owns (raw files under the image root, remote NBD exports) and their data path: every write goes through the node, so its bitmaps record it."),
        ("Bitmaps", "Dirty bitmaps of a node: what was written since they were created or cleared (QEMU's block-dirty-bitmap-*)."),
        ("Jobs", "Mirror jobs and QEMU's job verbs: copy a node to another while it stays in use, then pivot; finished jobs stay in the history."),
        ("Exports", "Nodes served over NBD (qemu-io, qemu-img, nbdcopy, the kernel), with their dirty bitmaps as qemu:dirty-bitmap contexts."),
        ("Transactions", "Several bitmap actions and mirror starts at one instant, all or nothing (QMP's transaction)."),
        ("Events", "The event stream (Server-Sent Events): QEMU's job events, replayable with Last-Event-ID."),
    ];

    public static void Configure(SwaggerGenOptions o)
    {
        o.SwaggerDoc("v1", new OpenApiInfo
        {
            Title = "BlockMirror",
            Version = "v1",
            Description = """
                Dirty bitmaps and live mirror jobs over local images, QEMU's semantics over REST.

                Every refusal is an RFC 9457 problem document with a stable `code`; a request that cannot be
                understood (malformed JSON, a value of the wrong kind, an unknown member, a missing required one)
                is a 400 naming each field in `errors`. Byte counts (sizes, offsets, lengths, granularities,
                buffer sizes, speeds) are integers, or sizes such as `64K`, `1M`, `1G` (powers of 1024).
                With `Auth:ApiKeys` configured, every call needs `Authorization: Bearer <key>` ("Authorize").
                """,
        });
        o.SupportNonNullableReferenceTypes();
        // A member that refers to an enum or an object keeps its own description beside the $ref.
        o.UseAllOfToExtendReferenceSchemas();
        var xml = Path.Combine(AppContext.BaseDirectory, "BlockMirror.Api.xml");
        if (File.Exists(xml))
            o.IncludeXmlComments(xml);
        o.AddSecurityDefinition("bearer", new OpenApiSecurityScheme
        {
            Type = SecuritySchemeType.Http,
            Scheme = "bearer",
            Description = "One of the keys in Auth:ApiKeys (only when keys are configured; without keys the API listens on loopback only and needs none).",
        });
        o.AddSecurityRequirement(document => new OpenApiSecurityRequirement
        {
            [new OpenApiSecuritySchemeReference("bearer", document)] = [],
        });
        o.OrderActionsBy(OrderKey);
        o.DocumentFilter<TagOrderDocumentFilter>();
        o.OperationFilter<OctetStreamBodyOperationFilter>();
        o.SchemaFilter<ContractSchemaFilter>();
    }

    /// <summary>Operations sorted by their tag's place in <see cref="Tags"/>, then as they were mapped.</summary>
    private static string OrderKey(ApiDescription api)
    {
        var tag = api.ActionDescriptor.EndpointMetadata.OfType<Microsoft.AspNetCore.Http.Metadata.ITagsMetadata>().SelectMany(t => t.Tags).FirstOrDefault();
        var index = Array.FindIndex(Tags, t => t.Name == tag);
        return $"{(index < 0 ? Tags.Length : index):D2} {api.RelativePath}";
    }
}
