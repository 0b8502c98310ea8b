using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Issue 12 item 5: the served OpenAPI document is usable without the source: required members
/// marked, every operation summarized, every schema member described, examples that work when sent
/// as they are, tags in the order a user works, and the Bearer scheme for "Authorize".
/// </summary>
public sealed class OpenApiDocumentTests() : ServiceTest(WithNbd())
{
    private JsonNode _doc = null!;

    protected override async Task SetUpAsync()
    {
        _doc = JsonNode.Parse(await Http.GetStringAsync("/swagger/v1/swagger.json"))!;
    }

    private JsonObject Schemas => _doc["components"]!["schemas"]!.AsObject();

    private IEnumerable<(string Path, string Method, JsonNode Operation)> Operations =>
        _doc["paths"]!.AsObject().SelectMany(p => p.Value!.AsObject().Select(m => (p.Key, m.Key, m.Value!)));

    [Theory]
    [InlineData("MirrorJobRequest", new[] { "device", "sync", "target" })]
    [InlineData("CreateNodeRequest", new[] { "driver", "name" })]
    [InlineData("CreateImageSpec", new[] { "size" })]
    [InlineData("CreateBitmapRequest", new[] { "name" })]
    [InlineData("MergeBitmapsRequest", new[] { "sources" })]
    [InlineData("BitmapSourceDto", new[] { "name" })]
    [InlineData("CreateExportRequest", new[] { "name", "node" })]
    [InlineData("ZeroRequest", new[] { "length", "offset" })]
    [InlineData("DiscardRequest", new[] { "length", "offset" })]
    [InlineData("TransactionRequest", new[] { "actions" })]
    [InlineData("TransactionActionDto", new[] { "type" })]
    public void Required_members_are_marked(string schema, string[] required)
    {
        var marked = Schemas[schema]!["required"]?.AsArray().Select(r => (string)r!).Order().ToArray() ?? [];
        Assert.Equal(required, marked);
        foreach (var member in required)
            Assert.Null(Schemas[schema]!["properties"]![member]!["nullable"]);
    }

    [Fact]
    public void Required_query_parameters_are_marked()
    {
        string[] RequiredOf(string path, string method) =>
            [.. _doc["paths"]![path]![method]!["parameters"]!.AsArray().Where(p => (bool?)p!["required"] == true && (string?)p["in"] == "query").Select(p => (string)p!["name"]!).Order()];
        Assert.Equal(["length", "offset"], RequiredOf("/api/v1/nodes/{node}/data", "get"));
        Assert.Equal(["offset"], RequiredOf("/api/v1/nodes/{node}/data", "put"));
    }

    [Fact]
    public void Every_operation_has_a_summary_and_every_schema_member_a_description()
    {
        var missing = new List<string>();
        foreach (var (path, method, op) in Operations)
        {
            if (string.IsNullOrWhiteSpace((string?)op["summary"]))
                missing.Add($"{method} {path}: summary");
            foreach (var p in op["parameters"]?.AsArray() ?? [])
            {
                if ((string?)p!["in"] == "query" && string.IsNullOrWhiteSpace((string?)p["description"]))
                    missing.Add($"{method} {path}: parameter {p["name"]}");
            }
        }
        foreach (var (name, schema) in Schemas)
        {
            if (string.IsNullOrWhiteSpace((string?)schema!["description"]))
                missing.Add($"schema {name}");
            foreach (var (member, property) in schema["properties"]?.AsObject() ?? [])
            {
                if (string.IsNullOrWhiteSpace((string?)property!["description"]))
                    missing.Add($"schema {name}.{member}");
            }
        }
        Assert.True(missing.Count == 0, "Undocumented: " + string.Join("; ", missing));
    }

    [Fact]
    public void Tags_come_in_the_order_a_user_works_and_bearer_auth_is_declared()
    {
        Assert.Equal(["Nodes", "Bitmaps", "Jobs", "Exports", "Transactions", "Events"],
            _doc["tags"]!.AsArray().Select(t => (string)t!["name"]!).ToArray());
        Assert.All(_doc["tags"]!.AsArray(), t => Assert.False(string.IsNullOrWhiteSpace((string?)t!["description"])));
        // Operations appear grouped in the same order.
        var order = Operations.Select(o => (string)o.Operation["tags"]![0]!).Distinct().ToArray();
        Assert.Equal(["Nodes", "Bitmaps", "Jobs", "Exports", "Transactions", "Events"], order);

        var scheme = _doc["components"]!["securitySchemes"]!["bearer"]!;
        Assert.Equal("http", (string?)scheme["type"]);
        Assert.Equal("bearer", (string?)scheme["scheme"]);
        Assert.Contains(_doc["security"]!.AsArray(), s => s!.AsObject().ContainsKey("bearer"));
    }

    [Fact]
    public void Every_request_body_has_an_example()
    {
        foreach (var (path, method, op) in Operations)
        {
            var content = op["requestBody"]?["content"]?["application/json"];
            if (content is null)
                continue;
            var schema = content["schema"]!;
            var name = ((string)(schema["$ref"] ?? schema["allOf"]![0]!["$ref"])!).Split('/')[^1];
            Assert.True(Schemas[name]!["example"] is JsonObject, $"{method} {path}: {name} has no example");
        }
    }

    /// <summary>The examples of the served document, sent as they are, in the order a user would.</summary>
    [Fact]
    public async Task The_examples_work_when_sent_as_they_are()
    {
        JsonNode Example(string schema) => Schemas[schema]!["example"]!.DeepClone();

        await Send(HttpMethod.Post, "/api/v1/nodes", Example("CreateNodeRequest"), HttpStatusCode.Created);
        var copy = Example("CreateNodeRequest");
        copy["name"] = "disk0-copy";
        copy["path"] = "vm/disk0-copy.img";
        await Send(HttpMethod.Post, "/api/v1/nodes", copy, HttpStatusCode.Created);
        await Send(HttpMethod.Post, "/api/v1/nodes/disk0/bitmaps", Example("CreateBitmapRequest"), HttpStatusCode.Created);
        await Send(HttpMethod.Post, "/api/v1/nodes/disk0/zero", Example("ZeroRequest"), HttpStatusCode.NoContent);
        await Send(HttpMethod.Post, "/api/v1/nodes/disk0/discard", Example("DiscardRequest"), HttpStatusCode.NoContent);
        await Send(HttpMethod.Post, "/api/v1/transactions", Example("TransactionRequest"), HttpStatusCode.OK);
        await Send(HttpMethod.Post, "/api/v1/nodes/disk0/bitmaps/copy/merge", Example("MergeBitmapsRequest"), HttpStatusCode.OK);
        var job = await Send(HttpMethod.Post, "/api/v1/jobs/mirror", Example("MirrorJobRequest"), HttpStatusCode.Created);
        var id = (string)job["id"]!;
        await Send(HttpMethod.Patch, $"/api/v1/jobs/{id}", Example("ChangeJobRequest"), HttpStatusCode.OK);
        await Send(HttpMethod.Post, "/api/v1/exports", Example("CreateExportRequest"), HttpStatusCode.Created);
        await Send(HttpMethod.Post, $"/api/v1/jobs/{id}/cancel", Example("CancelJobRequest"), HttpStatusCode.OK);

        // The members' examples (sub-schemas) are requests of their own kind too.
        var action = new JsonObject { ["actions"] = new JsonArray(Example("TransactionActionDto")) };
        action["actions"]![0]!["name"] = "copy2";
        await Send(HttpMethod.Post, "/api/v1/transactions", action, HttpStatusCode.OK);
        var node = new JsonObject { ["name"] = "n", ["driver"] = "raw", ["path"] = "n.img", ["create"] = Example("CreateImageSpec") };
        await Send(HttpMethod.Post, "/api/v1/nodes", node, HttpStatusCode.Created);
        var merge = new JsonObject { ["sources"] = new JsonArray(Example("BitmapSourceDto")) };
        await Send(HttpMethod.Post, "/api/v1/nodes/disk0/bitmaps/copy2/merge", merge, HttpStatusCode.OK);
    }

    private async Task<JsonNode> Send(HttpMethod method, string url, JsonNode body, HttpStatusCode expected)
    {
        using var request = new HttpRequestMessage(method, url) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request);
        return await ApiClient.ExpectAsync(response, expected);
    }
}
