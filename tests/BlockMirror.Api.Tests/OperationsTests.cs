using Microsoft.Extensions.Configuration;
using BlockMirror.Api.Infrastructure;
using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

public sealed class OperationsTests : ServiceTest
{
    [Fact]
    public async Task Healthz_is_healthy()
    {
        using var r = await Http.GetAsync("/healthz");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("Healthy", await r.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Served_openapi_document_equals_the_checked_in_one()
    {
        // Regenerate with: ./openapi/generate.sh (see README): it runs this test with
        // BLOCKMIRROR_UPDATE_OPENAPI=1, which writes the served document to openapi/openapi.json.
        var text = await Http.GetStringAsync("/swagger/v1/swagger.json");
        var served = JsonNode.Parse(text);
        var file = FindRepoFile("openapi/openapi.json");
        if (Environment.GetEnvironmentVariable("BLOCKMIRROR_UPDATE_OPENAPI") == "1")
            await File.WriteAllTextAsync(file, served!.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
        var checkedIn = JsonNode.Parse(await File.ReadAllTextAsync(file));
        Assert.True(JsonNode.DeepEquals(served, checkedIn),
            "openapi/openapi.json differs from the served document: run ./openapi/generate.sh and commit the result");
    }

    [Fact]
    public async Task Swagger_ui_is_served()
    {
        using var r = await Http.GetAsync("/swagger/index.html");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Contains("swagger", await r.Content.ReadAsStringAsync(), StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Unknown_routes_and_methods_are_problem_documents()
    {
        using (var r = await Http.GetAsync("/api/v1/nope"))
            await ApiClient.ExpectProblemAsync(r, 404, "not-found");
        using (var r = await Http.PatchAsync("/api/v1/nodes", new StringContent("{}")))
            await ApiClient.ExpectProblemAsync(r, 405, "method-not-allowed");
    }

    [Theory]
    [InlineData("{")]
    [InlineData("[]")]
    [InlineData("{\"name\": 5, \"driver\": \"raw\"}")]
    [InlineData("{\"name\": \"a\", \"driver\": \"raw\", \"path\": \"a.img\", \"create\": {\"size\": \"big\"}}")]
    [InlineData("{\"name\": \"a\", \"driver\": \"raw\", \"path\": \"a.img\", \"create\": {\"size\": 1e400}}")]
    [InlineData("{\"name\": \"a\", \"driver\": \"raw\", \"path\": \"a.img\", \"create\": {\"size\": 99999999999999999999999}}")]
    [InlineData("{\"name\": \"a\", \"driver\": \"raw\", \"path\": \"a.img\", \"readOnly\": \"yes\"}")]
    [InlineData("null")]
    [InlineData("")]
    public async Task Malformed_json_is_invalid_request(string body)
    {
        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        using var r = await Http.PostAsync("/api/v1/nodes", content);
        await ApiClient.ExpectProblemAsync(r, 400, "invalid-request");
    }

    [Fact]
    public async Task Wrong_content_type_is_a_problem()
    {
        using var content = new StringContent("{}", System.Text.Encoding.UTF8, "text/plain");
        using var r = await Http.PostAsync("/api/v1/nodes", content);
        Assert.Equal(415, (int)r.StatusCode);
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType?.MediaType);
    }

    [Fact]
    public async Task Api_keys_are_required_when_configured()
    {
        await using var secured = new BlockMirrorFactory(settings: new Dictionary<string, string?> { ["Auth:ApiKeys:0"] = "s3cret" });
        var http = secured.CreateClient();
        using (var r = await http.GetAsync("/api/v1/nodes"))
            await ApiClient.ExpectProblemAsync(r, 401, "unauthorized");
        http.DefaultRequestHeaders.Authorization = new("Bearer", "wrong");
        using (var r = await http.GetAsync("/api/v1/nodes"))
            await ApiClient.ExpectProblemAsync(r, 401, "unauthorized");
        http.DefaultRequestHeaders.Authorization = new("Bearer", "s3cret");
        using (var r = await http.GetAsync("/api/v1/nodes"))
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        // Health stays open for probes.
        http.DefaultRequestHeaders.Authorization = null;
        using (var r = await http.GetAsync("/healthz"))
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }

    [Fact]
    public void Refuses_a_public_address_without_keys()
    {
        var config = new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Urls"] = "http://0.0.0.0:5080" }).Build();
        Assert.Equal(ExitCodes.Configuration, Assert.Throws<StartupRefusedException>(() => ListenGuard.Check(config)).ExitCode);
        var withKeys = new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Urls"] = "http://0.0.0.0:5080", ["Auth:ApiKeys:0"] = "k" }).Build();
        ListenGuard.Check(withKeys);
        var loopback = new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Urls"] = "http://127.0.0.1:5080;http://[::1]:5081;http://localhost:5082" }).Build();
        ListenGuard.Check(loopback);
    }

    internal static string FindRepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate))
                return candidate;
        }
        throw new FileNotFoundException(relative);
    }
}
