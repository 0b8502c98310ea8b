using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// The REST calls the two-host tests make of a <see cref="NamespacedService"/>: the API is the only
/// view into the other namespace's service.
/// </summary>
internal static class HostApi
{
    public static async Task PutAsync(HttpClient http, string node, long offset, byte[] data)
    {
        using var content = new ByteArrayContent(data);
        using var r = await http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        Assert.True(r.StatusCode == HttpStatusCode.NoContent, await r.Content.ReadAsStringAsync());
    }

    public static async Task<JsonNode> SendAsync(HttpClient http, HttpMethod method, string url, object? body, HttpStatusCode expected)
    {
        using var request = new HttpRequestMessage(method, url) { Content = body is null ? null : JsonContent.Create(body) };
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"{method} {url}: expected {(int)expected}, got {(int)response.StatusCode}: {text}");
        return text.Length == 0 ? new JsonObject() : JsonNode.Parse(text)!;
    }

    /// <summary>A bounded poll of the job's state until <paramref name="done"/> holds.</summary>
    public static async Task<JsonNode> WaitForJobAsync(NamespacedService service, string id, Func<JsonNode, bool> done)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(120);
        while (true)
        {
            var job = await SendAsync(service.Http, HttpMethod.Get, $"/api/v1/jobs/{id}?include=dismissed", null, HttpStatusCode.OK);
            if (done(job))
                return job;
            Assert.True(DateTime.UtcNow < deadline, $"job {id}: {job.ToJsonString()}\n{service.Log}");
            await Task.Delay(50);
        }
    }
}
