using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>Small helpers over HttpClient for the REST contract: JSON in, JSON out, problems asserted by code.</summary>
public static class ApiClient
{
    public static async Task<JsonNode> PostJsonAsync(this HttpClient http, string url, object body, HttpStatusCode expected = HttpStatusCode.OK)
    {
        using var response = await http.PostAsJsonAsync(url, body);
        return await ExpectAsync(response, expected);
    }

    public static async Task<JsonNode> GetJsonAsync(this HttpClient http, string url, HttpStatusCode expected = HttpStatusCode.OK)
    {
        using var response = await http.GetAsync(url);
        return await ExpectAsync(response, expected);
    }

    public static async Task<JsonNode> ExpectAsync(HttpResponseMessage response, HttpStatusCode expected)
    {
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"Expected {(int)expected} but got {(int)response.StatusCode}: {text}");
        return text.Length == 0 ? new JsonObject() : JsonNode.Parse(text)!;
    }

    /// <summary>Asserts a problem document with <paramref name="code"/> and <paramref name="status"/>; returns it.</summary>
    public static async Task<JsonNode> ExpectProblemAsync(HttpResponseMessage response, int status, string code)
    {
        var text = await response.Content.ReadAsStringAsync();
        Assert.True((int)response.StatusCode == status, $"Expected {status} {code} but got {(int)response.StatusCode}: {text}");
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var doc = JsonNode.Parse(text)!;
        Assert.Equal(code, (string?)doc["code"]);
        Assert.Equal(status, (int?)doc["status"]);
        Assert.False(string.IsNullOrEmpty((string?)doc["detail"]), "problem without detail");
        return doc;
    }

    public static async Task<JsonNode> PostProblemAsync(this HttpClient http, string url, object? body, int status, string code)
    {
        using var response = body is null ? await http.PostAsync(url, null) : await http.PostAsJsonAsync(url, body);
        return await ExpectProblemAsync(response, status, code);
    }

    public static async Task<JsonNode> CreateNodeAsync(this HttpClient http, string name, long size, string? path = null) =>
        await http.PostJsonAsync("/api/v1/nodes", new { name, driver = "raw", path = path ?? $"{name}.img", create = new { size } }, HttpStatusCode.Created);

    public static async Task<JsonNode> AddBitmapAsync(this HttpClient http, string node, string name, long? granularity = null, bool persistent = false, bool disabled = false) =>
        await http.PostJsonAsync($"/api/v1/nodes/{node}/bitmaps", new { name, granularity, persistent, disabled }, HttpStatusCode.Created);

    public static async Task WriteAsync(this HttpClient http, string node, long offset, byte[] data)
    {
        using var content = new ByteArrayContent(data);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var response = await http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        await ExpectAsync(response, HttpStatusCode.NoContent);
    }

    public static async Task<byte[]> ReadAsync(this HttpClient http, string node, long offset, long length)
    {
        using var response = await http.GetAsync($"/api/v1/nodes/{node}/data?offset={offset}&length={length}");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadAsByteArrayAsync();
    }

    public static byte[] Pattern(int length, byte seed)
    {
        var data = new byte[length];
        for (var i = 0; i < data.Length; i++)
            data[i] = (byte)(seed + i * 7 + (i >> 9));
        return data;
    }

    public static List<(long Offset, long Length)> Extents(JsonNode doc) =>
        [.. doc["items"]!.AsArray().Select(e => ((long)e!["offset"]!, (long)e["length"]!))];

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
}
