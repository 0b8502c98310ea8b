using System.Text.Json.Nodes;
using BlockMirror.Api.Contracts;
using BlockMirror.Core.Jobs;
using Microsoft.AspNetCore.Mvc;
using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// What XML comments cannot say in the schemas: request examples that work as sent (the generated
/// ones, "granularity": 0 and "bitmap": "string", are refused), the meaning of each enum value (the
/// enums live in the block layer), and the members of a problem document, extensions included.
/// </summary>
public sealed class ContractSchemaFilter : ISchemaFilter
{
    /// <summary>
    /// One example per request body, a walkthrough in order: node disk0 and its copy target, a
    /// bitmap, a mirror with it, an export; they are sent as they are by the tests.
    /// </summary>
    public static readonly IReadOnlyDictionary<Type, string> Examples = new Dictionary<Type, string>
    {
        [typeof(CreateNodeRequest)] = """{"name":"disk0","driver":"raw","path":"vm/disk0.img","create":{"size":1073741824}}""",
        [typeof(CreateImageSpec)] = """{"size":1073741824}""",
        [typeof(CreateBitmapRequest)] = """{"name":"b0","granularity":65536,"persistent":true}""",
        [typeof(MergeBitmapsRequest)] = """{"sources":[{"name":"b0"}]}""",
        [typeof(BitmapSourceDto)] = """{"node":"disk0","name":"b0"}""",
        [typeof(ZeroRequest)] = """{"offset":0,"length":65536,"mayUnmap":true}""",
        [typeof(DiscardRequest)] = """{"offset":0,"length":65536}""",
        [typeof(MirrorJobRequest)] = """{"id":"job0","device":"disk0","target":"disk0-copy","sync":"full","bitmap":"b0","bitmapMode":"never","copyMode":"background","speed":0}""",
        [typeof(CancelJobRequest)] = """{"force":false}""",
        [typeof(ChangeJobRequest)] = """{"speed":10485760}""",
        [typeof(CreateExportRequest)] = """{"name":"disk0","node":"disk0","writable":true,"bitmaps":[]}""",
        [typeof(TransactionRequest)] = """
            {"actions":[
              {"type":"bitmap-add","node":"disk0","name":"copy"},
              {"type":"bitmap-merge","node":"disk0","name":"copy","sources":[{"name":"b0"}]},
              {"type":"bitmap-clear","node":"disk0","name":"b0"}]}
            """,
        [typeof(TransactionActionDto)] = """{"type":"bitmap-add","node":"disk0","name":"copy","granularity":65536}""",
    };

    private static readonly Dictionary<Type, string> s_enums = new()
    {
        [typeof(MirrorSyncMode)] = "What a mirror copies: full (everything), top (what the device's own layer allocates; for raw = full), none (only writes from now on).",
        [typeof(BitmapMode)] = "What a mirror does with its bitmap: always (it is the working bitmap, empty after success), never (a private copy works; it keeps recording), on-success (like never; on success it keeps only what the job left dirty).",
        [typeof(MirrorCopyMode)] = "background (writes dirty the working bitmap, copied later), write-blocking (a write completes once it is on both nodes) or auto (background until the remaining bytes stop shrinking while writes go on, then write-blocking by itself).",
        [typeof(BlockdevOnError)] = "On an I/O error: report (the job fails), ignore (retry later), stop (pause, ioStatus set), enospc (stop on no-space, report otherwise).",
    };

    private static readonly (string Name, JsonSchemaType Type, string Description)[] s_problemMembers =
    [
        ("type", JsonSchemaType.String, "A URI reference for the problem type (RFC 9457)."),
        ("title", JsonSchemaType.String, "A short summary of the problem type."),
        ("status", JsonSchemaType.Integer, "The HTTP status code."),
        ("detail", JsonSchemaType.String, "What went wrong, in a sentence (QEMU's wording where QEMU has one)."),
        ("instance", JsonSchemaType.String, "A URI reference for this occurrence."),
        ("code", JsonSchemaType.String, "The stable machine-readable code (kebab-case): match on it, never on detail."),
        ("actionIndex", JsonSchemaType.Integer, "Transactions: the index of the action that was refused."),
        ("traceId", JsonSchemaType.String, "The request's trace id, for the logs."),
    ];

    public void Apply(IOpenApiSchema schema, SchemaFilterContext context)
    {
        if (schema is not OpenApiSchema s)
            return;
        if (Examples.TryGetValue(context.Type, out var example))
            s.Example = JsonNode.Parse(example);
        if (s_enums.TryGetValue(context.Type, out var description))
            s.Description = description;
        if (context.Type == typeof(ProblemDetails))
            DescribeProblem(s);
    }

    private static void DescribeProblem(OpenApiSchema s)
    {
        s.Description = "An RFC 9457 problem document: every refusal, with a stable code.";
        s.Properties ??= new Dictionary<string, IOpenApiSchema>();
        foreach (var (name, type, description) in s_problemMembers)
        {
            var member = s.Properties.TryGetValue(name, out var existing) && existing is OpenApiSchema known
                ? known
                : new OpenApiSchema { Type = type | JsonSchemaType.Null };
            member.Description = description;
            s.Properties[name] = member;
        }
        s.Properties["errors"] = new OpenApiSchema
        {
            Type = JsonSchemaType.Object | JsonSchemaType.Null,
            Description = "400s for a body or query: each field that is wrong (\"create.size\", \"actions[0].job.sync\", \"length\"; \"body\" for the body as a whole) with what was expected and received.",
            AdditionalProperties = new OpenApiSchema { Type = JsonSchemaType.Array, Items = new OpenApiSchema { Type = JsonSchemaType.String } },
        };
    }
}
