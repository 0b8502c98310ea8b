using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Data.Sqlite;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>The real service in-process (REST over TestServer, NBD on a real loopback port), in a temp folder.</summary>
public sealed class ServiceFactory : WebApplicationFactory<Program>
{
    private readonly bool _ownsDataDir;

    /// <summary>A service in a new temp folder, or (a restart) in <paramref name="dataDir"/>, which it then leaves in place.</summary>
    public ServiceFactory(string? dataDir = null)
    {
        _ownsDataDir = dataDir is null;
        DataDir = dataDir ?? Directory.CreateTempSubdirectory("blockmirror-interop-").FullName;
    }

    public string DataDir { get; }

    /// <summary>More settings (configuration keys such as <c>Nbd:Tls:CertificatePath</c>), applied at start.</summary>
    public Dictionary<string, string> Settings { get; } = [];

    public string ImageRoot => Path.Combine(DataDir, "images");

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Testing");
        builder.UseSetting("ConnectionStrings:BlockMirror", $"Data Source={Path.Combine(DataDir, "blockmirror.db")}");
        builder.UseSetting("Storage:Root", ImageRoot);
        builder.UseSetting("Nbd:Listen", "127.0.0.1:0");
        foreach (var (key, value) in Settings)
            builder.UseSetting(key, value);
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        SqliteConnection.ClearAllPools();
        if (!_ownsDataDir)
            return;
        try
        {
            Directory.Delete(DataDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public static async Task<JsonNode> SendAsync(HttpClient http, HttpMethod method, string url, object? body, HttpStatusCode expected)
    {
        using var request = new HttpRequestMessage(method, url) { Content = body is null ? null : JsonContent.Create(body) };
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"{method} {url}: expected {(int)expected}, got {(int)response.StatusCode}: {text}");
        return text.Length == 0 ? new JsonObject() : JsonNode.Parse(text)!;
    }

    /// <summary>Waits (on the job resource, with a bounded number of long-poll-free reads) for a status.</summary>
    public static async Task<JsonNode> WaitForJobAsync(HttpClient http, string id, Func<JsonNode, bool> done, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        using var stream = await http.GetStreamAsync("/api/v1/events");
        using var reader = new StreamReader(stream);
        // Each event wakes us; between events nothing changes, so no polling interval is needed.
        while (true)
        {
            using var r = await http.GetAsync($"/api/v1/jobs/{id}?include=dismissed");
            var job = JsonNode.Parse(await r.Content.ReadAsStringAsync())!;
            if (r.IsSuccessStatusCode && done(job))
                return job;
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"job {id}: {job.ToJsonString()}");
            using var cts = new CancellationTokenSource(TimeSpan.FromTicks(Math.Max(1, (deadline - DateTime.UtcNow).Ticks)));
            string? line;
            try
            {
                line = await reader.ReadLineAsync(cts.Token);
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                // Say where the job stood, not just that the stream read was cancelled.
                throw new TimeoutException($"job {id} after {timeout}: {job.ToJsonString()}");
            }
            if (line is null)
                throw new IOException("event stream closed");
        }
    }
}
