using System.Net;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests.Lifecycle;

/// <summary>
/// With API keys set, /metrics (job ids, node, bitmap and export names) and /swagger need a key like
/// /api, unless Auth:AllowAnonymousMetrics / Auth:AllowAnonymousSwagger open them (issue 10, case 18).
/// </summary>
public sealed class AnonymousEndpointsTests
{
    private static readonly string[] Paths = ["/metrics", "/swagger/v1/swagger.json", "/swagger/index.html"];

    [Fact]
    public async Task Metrics_and_swagger_need_a_key_when_keys_are_set()
    {
        await using var secured = new BlockMirrorFactory(settings: new Dictionary<string, string?> { ["Auth:ApiKeys:0"] = "s3cret" });
        var http = secured.CreateClient();
        foreach (var path in Paths)
        {
            using var refused = await http.GetAsync(path);
            await ApiClient.ExpectProblemAsync(refused, 401, "unauthorized");
        }
        http.DefaultRequestHeaders.Authorization = new("Bearer", "s3cret");
        foreach (var path in Paths)
        {
            using var allowed = await http.GetAsync(path);
            Assert.True(allowed.StatusCode == HttpStatusCode.OK, $"{path}: {(int)allowed.StatusCode}");
        }
        // Probes and the dashboard's page stay open.
        http.DefaultRequestHeaders.Authorization = null;
        using (var health = await http.GetAsync("/healthz"))
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        using (var page = await http.GetAsync("/"))
            Assert.Equal(HttpStatusCode.OK, page.StatusCode);
    }

    [Fact]
    public async Task The_settings_open_metrics_and_swagger_one_by_one()
    {
        await using (var metrics = new BlockMirrorFactory(settings: new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0"] = "s3cret",
            ["Auth:AllowAnonymousMetrics"] = "true",
        }))
        {
            var http = metrics.CreateClient();
            using (var open = await http.GetAsync("/metrics"))
                Assert.Equal(HttpStatusCode.OK, open.StatusCode);
            using (var closed = await http.GetAsync("/swagger/v1/swagger.json"))
                Assert.Equal(HttpStatusCode.Unauthorized, closed.StatusCode);
            using (var api = await http.GetAsync("/api/v1/nodes"))
                Assert.Equal(HttpStatusCode.Unauthorized, api.StatusCode);
        }
        await using var swagger = new BlockMirrorFactory(settings: new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0"] = "s3cret",
            ["Auth:AllowAnonymousSwagger"] = "true",
        });
        var h = swagger.CreateClient();
        using (var open = await h.GetAsync("/swagger/v1/swagger.json"))
            Assert.Equal(HttpStatusCode.OK, open.StatusCode);
        using (var closed = await h.GetAsync("/metrics"))
            Assert.Equal(HttpStatusCode.Unauthorized, closed.StatusCode);
    }
}
