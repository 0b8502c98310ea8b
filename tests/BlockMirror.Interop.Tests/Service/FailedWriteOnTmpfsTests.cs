using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// Issue 10.3 on a real file system that runs out of space: a write that fails part-way has
/// changed the image, so the bitmaps record it and a running mirror copies it.
/// </summary>
public sealed class FailedWriteOnTmpfsTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private const long G = 65536;
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    private Task<JsonNode> Send(HttpMethod method, string url, object? body, HttpStatusCode expected) =>
        ServiceFactory.SendAsync(_http, method, url, body, expected);

    private async Task<byte[]> ReadAsync(string node, long offset, long length)
    {
        using var r = await _http.GetAsync($"/api/v1/nodes/{node}/data?offset={offset}&length={length}");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return await r.Content.ReadAsByteArrayAsync();
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>
    /// The source on a 1 MiB tmpfs with 768 KiB used: a 1 MiB PUT answers 409 io-error with its
    /// first part in the image. Before, neither bitmap recorded it and the running mirror completed
    /// with a target that differed from the source there.
    /// </summary>
    [TmpfsFact]
    public async Task A_put_that_runs_out_of_space_marks_the_bitmaps_and_reaches_the_mirror_target()
    {
        var small = Path.Combine(_factory.ImageRoot, "small");
        Directory.CreateDirectory(small);
        await InteropTools.RunOkAsync("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small);
        try
        {
            await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "src", driver = "raw", path = "small/src.img", create = new { size = Size } }, HttpStatusCode.Created);
            await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "dst", driver = "raw", path = "dst.img", create = new { size = Size } }, HttpStatusCode.Created);
            using (var fill = new ByteArrayContent(Pattern(768 << 10, 1)))
            using (var r = await _http.PutAsync("/api/v1/nodes/src/data?offset=0", fill))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
            await Send(HttpMethod.Post, "/api/v1/nodes/src/bitmaps", new { name = "b", granularity = G }, HttpStatusCode.Created);
            await Send(HttpMethod.Post, "/api/v1/nodes/src/bitmaps", new { name = "p", granularity = G, persistent = true }, HttpStatusCode.Created);
            await Send(HttpMethod.Post, "/api/v1/jobs/mirror", new { id = "m", device = "src", target = "dst", sync = "full" }, HttpStatusCode.Created);
            await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));

            const long at = 2L << 20;
            var data = Pattern(1 << 20, 2);
            using (var content = new ByteArrayContent(data))
            using (var r = await _http.PutAsync($"/api/v1/nodes/src/data?offset={at}", content))
            {
                var problem = await r.Content.ReadFromJsonAsync<JsonNode>();
                Assert.True(r.StatusCode == HttpStatusCode.Conflict, $"{(int)r.StatusCode}: {problem}");
                Assert.Equal("io-error", (string?)problem!["code"]);
            }
            // Part of it is in the image (a short write before ENOSPC), not all of it.
            var image = await ReadAsync("src", at, data.Length);
            var applied = image.AsSpan().CommonPrefixLength(data);
            Assert.InRange(applied, 4096, data.Length - 1);

            foreach (var bitmap in new[] { "b", "p" })
            {
                var extents = await Send(HttpMethod.Get, $"/api/v1/nodes/src/bitmaps/{bitmap}/extents", null, HttpStatusCode.OK);
                var items = extents["items"]!.AsArray().Select(e => ((long)e!["offset"]!, (long)e["length"]!)).ToList();
                Assert.Equal([(at, (long)data.Length)], items);
            }

            // The mirror copied it: a soft cancel in ready converges to a point-in-time copy.
            await Send(HttpMethod.Post, "/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
            var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
            Assert.Null(done["error"]);
            Assert.Equal(await ReadAsync("src", 0, Size), await ReadAsync("dst", 0, Size));
            using (var r = await _http.DeleteAsync("/api/v1/nodes/src"))
                Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        }
        finally
        {
            // Lazy: the service may still hold the file open if an assertion failed.
            await InteropTools.RunAsync("umount", ["-l", small]);
        }
    }
}
