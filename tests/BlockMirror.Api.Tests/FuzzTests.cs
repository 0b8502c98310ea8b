using System.Net;
using System.Text;
using BlockMirror.Api.Tests.Infrastructure;
using Xunit.Abstractions;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Seeded hostile-input fuzzing of the REST API: thousands of malformed requests. Every response
/// is below 500; every refusal is a problem document with a code; a refused request changes no
/// state; nothing is created outside the image root.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output) : ServiceTest
{
    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", 4L << 20);
        await Http.CreateNodeAsync("disk1", 4L << 20);
        await Http.AddBitmapAsync("disk0", "b0");
        await Http.WriteAsync("disk0", 12345, new byte[777]);
    }

    private static readonly string[] Names =
        ["disk0", "disk1", "b0", "", " ", "..", "../x", "a/b", "%2e%2e", new string('n', 300), "ünï", "-x", "_ok", "a:b.c-d", "null", "0"];

    private static readonly string[] Paths =
        ["../../etc/passwd", "/etc/passwd", "a/../../x.img", "..", ".", "", "a//b.img", "~/x.img", "dir/", "x.img\u0000.txt", new string('p', 5000), "ok/new.img", "link/../../x"];

    private static readonly object?[] Numbers =
        [0, -1, 1, 511, 512, 513, 65536, long.MaxValue, long.MinValue, int.MaxValue, 1L << 31, 1L << 40, 1e300, -0.5, "12", null, true, new object[] { 1 }, new { }];

    private static readonly string[] Enums = ["full", "top", "none", "FULL", "sideways", "", "write-blocking", "background", "report", "stop", "x"];

    [Fact]
    public async Task Hostile_requests_never_produce_5xx_or_change_state_when_refused()
    {
        var random = new Random(20261126);
        var sent = 0;
        var refused = 0;
        for (var i = 0; i < 3000; i++)
        {
            using var request = NextRequest(random);
            var before = IsMutating(request.Method) ? await StateAsync() : null;
            using var response = await Http.SendAsync(request);
            sent++;
            var status = (int)response.StatusCode;
            var body = await response.Content.ReadAsStringAsync();
            Assert.True(status < 500, $"{request.Method} {request.RequestUri} → {status}: {body}");
            if (status >= 400)
            {
                refused++;
                Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
                Assert.Contains("\"code\":", body, StringComparison.Ordinal);
                if (before is not null)
                    Assert.Equal(before, await StateAsync());
            }
        }
        // Nothing escaped the image root.
        var outside = Directory.EnumerateFiles(Factory.DataDir, "*", SearchOption.AllDirectories)
            .Where(f => !f.StartsWith(Factory.ImageRoot + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            .Where(f => !Path.GetFileName(f).StartsWith("blockmirror.db", StringComparison.Ordinal))
            .ToList();
        Assert.Empty(outside);
        output.WriteLine($"fuzz: {sent} requests sent, {refused} refused, 0 5xx");
        Assert.True(refused > sent / 2, "the generator should mostly produce bad requests");
    }

    private static bool IsMutating(HttpMethod m) => m != HttpMethod.Get;

    /// <summary>A digest of the observable state: nodes, bitmaps (flags and content), jobs, exports.</summary>
    private async Task<string> StateAsync()
    {
        var sb = new StringBuilder();
        var nodes = await Http.GetJsonAsync("/api/v1/nodes");
        foreach (var n in nodes["items"]!.AsArray())
        {
            var copy = n!.DeepClone().AsObject();
            copy.Remove("allocatedBytes");
            sb.Append(copy.ToJsonString());
            foreach (var b in n["bitmaps"]!.AsArray())
            {
                sb.Append((await Http.GetJsonAsync($"/api/v1/nodes/{n["name"]}/bitmaps/{b}")).ToJsonString());
                sb.Append((await Http.GetJsonAsync($"/api/v1/nodes/{n["name"]}/bitmaps/{b}/sha256")).ToJsonString());
            }
        }
        sb.Append((await Http.GetJsonAsync("/api/v1/jobs")).ToJsonString());
        sb.Append((await Http.GetJsonAsync("/api/v1/exports")).ToJsonString());
        return sb.ToString();
    }

    private static T Pick<T>(Random r, T[] items) => items[r.Next(items.Length)];

    private static string Json(object? value) => System.Text.Json.JsonSerializer.Serialize(value);

    private static HttpRequestMessage NextRequest(Random r)
    {
        var node = Uri.EscapeDataString(Pick(r, Names));
        var name = Uri.EscapeDataString(Pick(r, Names));
        var n = Pick(r, Numbers);
        var m = Pick(r, Numbers);
        return r.Next(16) switch
        {
            0 => Post("/api/v1/nodes", $$"""{"name":{{Json(Pick(r, Names))}},"driver":{{Json(Pick(r, ["raw", "nbd", "qcow2", ""]))}},"path":{{Json(Pick(r, Paths))}},"create":{"size":{{Json(n)}} } }"""),
            1 => Post("/api/v1/nodes", $$"""{"name":"n{{r.Next(5)}}","driver":"nbd","uri":{{Json(Pick(r, ["nbd://", "nbd://127.0.0.1:1/x", "http://x", "nbd+unix:///x?socket=/nonexistent", ""]))}} }"""),
            2 => Post($"/api/v1/nodes/{node}/bitmaps", $$"""{"name":{{Json(Pick(r, Names))}},"granularity":{{Json(n)}},"persistent":{{Json(Pick(r, Numbers))}} }"""),
            3 => new HttpRequestMessage(HttpMethod.Put, $"/api/v1/nodes/{node}/data?offset={Uri.EscapeDataString(Json(n).Trim('"'))}") { Content = new ByteArrayContent(new byte[r.Next(0, 5000)]) },
            4 => new HttpRequestMessage(HttpMethod.Get, $"/api/v1/nodes/{node}/data?offset={Json(n)}&length={Json(m)}"),
            5 => Post($"/api/v1/nodes/{node}/zero", $$"""{"offset":{{Json(n)}},"length":{{Json(m)}},"mayUnmap":{{Json(Pick(r, Numbers))}} }"""),
            6 => Post($"/api/v1/nodes/{node}/discard", $$"""{"offset":{{Json(n)}},"length":{{Json(m)}} }"""),
            7 => Post($"/api/v1/nodes/{node}/bitmaps/{name}/{Pick(r, ["clear", "enable", "disable", "merge", "nope"])}",
                $$"""{"sources":[{"node":{{Json(Pick(r, Names))}},"name":{{Json(Pick(r, Names))}} }]}"""),
            8 => new HttpRequestMessage(HttpMethod.Get, $"/api/v1/nodes/{node}/bitmaps/{name}/extents?offset={Json(n)}&length={Json(m)}"),
            9 => Post("/api/v1/transactions", $$"""{"actions":[{"type":{{Json(Pick(r, ["bitmap-add", "bitmap-clear", "bitmap-merge", "bitmap-remove", "mirror-start", "x"]))}},"node":{{Json(Pick(r, Names))}},"name":{{Json(Pick(r, Names))}},"granularity":{{Json(n)}} },{"type":"bitmap-clear","node":"disk0","name":"missing"}]}"""),
            10 => Post("/api/v1/jobs/mirror", $$"""{"device":{{Json(Pick(r, Names))}},"target":{{Json(Pick(r, Names))}},"sync":{{Json(Pick(r, Enums))}},"granularity":{{Json(n)}},"bufSize":{{Json(m)}},"speed":{{Json(Pick(r, Numbers))}},"copyMode":{{Json(Pick(r, Enums))}},"bitmap":{{Json(Pick(r, Names))}} }"""),
            11 => Post($"/api/v1/jobs/{name}/{Pick(r, ["pause", "resume", "complete", "finalize", "dismiss", "cancel"])}", "{}"),
            12 => Post("/api/v1/exports", $$"""{"name":{{Json(Pick(r, Names))}},"node":{{Json(Pick(r, Names))}},"bitmaps":[{{Json(Pick(r, Names))}}]}"""),
            13 => Post(Pick(r, ["/api/v1/nodes", "/api/v1/transactions", "/api/v1/jobs/mirror", $"/api/v1/nodes/{node}/bitmaps"]), Garbage(r)),
            14 => new HttpRequestMessage(Pick(r, [HttpMethod.Delete, HttpMethod.Patch, HttpMethod.Put, HttpMethod.Options]), $"/api/v1/{Pick(r, ["nodes", "jobs", "exports", "transactions"])}/{name}")
            {
                Content = new StringContent(Garbage(r), Encoding.UTF8, "application/json"),
            },
            _ => new HttpRequestMessage(HttpMethod.Delete, $"/api/v1/nodes/{node}/bitmaps/{name}"),
        };
    }

    private static HttpRequestMessage Post(string url, string json) =>
        new(HttpMethod.Post, url) { Content = new StringContent(json, Encoding.UTF8, "application/json") };

    private static string Garbage(Random r) => r.Next(6) switch
    {
        0 => "{",
        1 => new string('[', 5000),
        2 => "{\"name\":" + new string('9', 400) + "}",
        3 => Convert.ToBase64String(Enumerable.Range(0, r.Next(1, 300)).Select(_ => (byte)r.Next(256)).ToArray()),
        4 => "{\"actions\":[null,1,\"x\",{}]}",
        _ => "\"\\ud800\"",
    };
}
