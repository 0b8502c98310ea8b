using System.Net;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>An exabyte NBD export (nbdkit's null plugin) as a node: what cannot be held in memory is refused with a code, never a 500.</summary>
public sealed class LargeRemoteNodeTests : IAsyncLifetime
{
    private const long Exabyte = 1L << 60;
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    [NbdInteropFact("nbdkit")]
    public async Task A_default_granularity_bitmap_on_a_1_EiB_nbd_node_is_refused_with_a_code()
    {
        var socket = Path.Combine(_factory.DataDir, "null.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "null", $"{Exabyte}");
        var node = await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes", new { name = "huge", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" }, HttpStatusCode.Created);
        Assert.Equal(Exabyte, (long)node["size"]!);

        // 2^44 granules of 64 KiB: more than a bitmap holds (a memory budget may refuse it first; either way a 4xx with a code).
        using var refused = await _http.PostAsync("/api/v1/nodes/huge/bitmaps", JsonContent(new { name = "b0" }));
        var text = await refused.Content.ReadAsStringAsync();
        Assert.True((int)refused.StatusCode is >= 400 and < 500, $"expected a 4xx, got {(int)refused.StatusCode}: {text}");
        Assert.Contains("\"code\":\"bitmap-", text, StringComparison.Ordinal);
        using (var missing = await _http.GetAsync("/api/v1/nodes/huge/bitmaps/b0"))
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        // The same for a mirror, whose working bitmap has the default granularity too.
        await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes", new { name = "huge2", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" }, HttpStatusCode.Created);
        using var mirror = await _http.PostAsync("/api/v1/jobs/mirror", JsonContent(new { id = "m", device = "huge", target = "huge2", sync = "full" }));
        var mirrorText = await mirror.Content.ReadAsStringAsync();
        Assert.True((int)mirror.StatusCode is >= 400 and < 500, $"expected a 4xx, got {(int)mirror.StatusCode}: {mirrorText}");
        using (var job = await _http.GetAsync("/api/v1/jobs/m"))
            Assert.Equal(HttpStatusCode.NotFound, job.StatusCode);
        Assert.False((bool)(await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/huge", null, HttpStatusCode.OK))["busy"]!);
    }

    private static System.Net.Http.Json.JsonContent JsonContent(object body) => System.Net.Http.Json.JsonContent.Create(body);
}
