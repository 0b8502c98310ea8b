using System.Net;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// A bitmap that cannot exist on a huge remote node (issue 10, items 8 and 16): an nbdkit export of
/// 1 EiB, where a default-granularity bitmap would need 2^44 bits. Refused with a code, before
/// anything changes, also inside a transaction whose earlier actions already prepared.
/// </summary>
public sealed class BitmapLimitsInteropTests : IAsyncLifetime
{
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    [NbdInteropFact("nbdkit")]
    public async Task A_default_bitmap_on_a_1_EiB_nbd_node_is_refused_with_a_code_and_changes_nothing()
    {
        var socket = Path.Combine(_factory.DataDir, "huge.sock");
        await using var server = await BackgroundTool.StartAsync("nbdkit", socket, "-f", "-U", socket, "null", "size=1E");
        await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes", new { name = "huge", driver = "nbd", uri = $"nbd+unix:///?socket={socket}" }, HttpStatusCode.Created);
        await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes", new { name = "small", driver = "raw", path = "small.img", create = new { size = 1L << 20 } }, HttpStatusCode.Created);
        await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes/small/bitmaps", new { name = "b" }, HttpStatusCode.Created);

        var alone = await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/nodes/huge/bitmaps", new { name = "b" }, HttpStatusCode.BadRequest);
        Assert.Equal("bitmap-too-large", (string?)alone["code"]);
        var inTransaction = await ServiceFactory.SendAsync(_http, HttpMethod.Post, "/api/v1/transactions", new
        {
            actions = new object[]
            {
                new { type = "bitmap-disable", node = "small", name = "b" },
                new { type = "bitmap-remove", node = "small", name = "b" },
                new { type = "bitmap-add", node = "huge", name = "b" },
            },
        }, HttpStatusCode.BadRequest);

        Assert.Equal("bitmap-too-large", (string?)inTransaction["code"]);
        Assert.Equal(2, (int?)inTransaction["actionIndex"]);
        var b = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/small/bitmaps/b", null, HttpStatusCode.OK);
        Assert.True((bool)b["recording"]!);
        Assert.False((bool)b["busy"]!);
        var huge = await ServiceFactory.SendAsync(_http, HttpMethod.Get, "/api/v1/nodes/huge/bitmaps", null, HttpStatusCode.OK);
        Assert.Empty(huge["items"]!.AsArray());
    }
}
