using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Interop.Tests.Nbd;
using BlockMirror.Interop.Tests.Service;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// qcow2 nodes of the running service against QEMU's tools: images qemu-img made, opened through the
/// REST API and written through the service's NBD export by qemu-io, then checked by qemu-img (check
/// clean, compare equal to a raw model written the same way); mirrors between qcow2, raw and qcow2
/// over a backing file in every sync mode, with writes during the job, targets compared by qemu-img.
/// </summary>
public sealed class Qcow2ServiceInteropTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly ServiceFactory _factory = new();
    private HttpClient _http = null!;

    /// <summary>What qemu-io writes, through our export and into the raw model alike (unaligned, zeroes, the last cluster).</summary>
    private static readonly string[] s_writes =
    [
        "write -P 0x11 0 4096",
        "write -P 0x22 3000000 70000",
        "write -z 8388608 1048576",
        "write -P 0x33 16711680 65536",
        "write -P 0x44 5242880 2097152",
        "write -z 1000000 5000",
    ];

    public Task InitializeAsync()
    {
        _http = _factory.CreateClient();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _factory.DisposeAsync();

    private string Full(string relative) => Path.Combine(_factory.ImageRoot, relative);

    private Task<JsonNode> Post(string url, object body, HttpStatusCode expected = HttpStatusCode.Created) =>
        ServiceFactory.SendAsync(_http, HttpMethod.Post, url, body, expected);

    private Task Delete(string url) => ServiceFactory.SendAsync(_http, HttpMethod.Delete, url, null, HttpStatusCode.NoContent);

    private static Task Io(string format, string image, IEnumerable<string> commands) =>
        InteropTools.RunOkAsync("qemu-io", ["-f", format, image, .. commands.SelectMany(c => new[] { "-c", c })]);

    /// <summary>
    /// An image as qemu-img makes it: <paramref name="kind"/> "plain" (written by qemu-io first),
    /// "backing" (an empty overlay on a raw base full of data, then written) or "compressed"
    /// (qemu-img convert -c of a raw file).
    /// </summary>
    private async Task MakeImageAsync(string kind, int clusterSize, string compat)
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        var options = $"cluster_size={clusterSize},compat={compat}";
        switch (kind)
        {
            case "compressed":
                await QemuImg.RunAsync("create", "-f", "raw", Full("src.raw"), Size.ToString());
                await Io("raw", Full("src.raw"), ["write -P 0xc1 0 3145728", "write -P 0xc2 10485760 65536"]);
                await QemuImg.RunAsync("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, Full("src.raw"), Full("img.qcow2"));
                break;
            case "backing":
                await QemuImg.RunAsync("create", "-f", "raw", Full("base.raw"), Size.ToString());
                await Io("raw", Full("base.raw"), ["write -P 0xb2 0 16777216"]);
                await QemuImg.RunAsync("create", "-f", "qcow2", "-o", options, "-b", "base.raw", "-F", "raw", Full("img.qcow2"), Size.ToString());
                await Io("qcow2", Full("img.qcow2"), ["write -P 0xa1 1048576 300000", "write -z 6291456 131072"]);
                break;
            default:
                await QemuImg.RunAsync("create", "-f", "qcow2", "-o", options, Full("img.qcow2"), Size.ToString());
                await Io("qcow2", Full("img.qcow2"), ["write -P 0xa1 1048576 300000", "write -z 6291456 131072"]);
                break;
        }
        await QemuImg.RunAsync("convert", "-f", "qcow2", "-O", "raw", Full("img.qcow2"), Full("model.raw"));
    }

    [QemuToolsTheory]
    [InlineData("plain", 4096, "1.1")]
    [InlineData("plain", 65536, "1.1")]
    [InlineData("plain", 2097152, "1.1")]
    [InlineData("plain", 65536, "0.10")]
    [InlineData("plain", 4096, "0.10")]
    [InlineData("backing", 65536, "1.1")]
    [InlineData("backing", 4096, "0.10")]
    [InlineData("backing", 2097152, "1.1")]
    [InlineData("compressed", 65536, "1.1")]
    [InlineData("compressed", 4096, "0.10")]
    public async Task A_qemu_img_image_written_through_our_export_is_clean_and_equal_to_its_model(string kind, int clusterSize, string compat)
    {
        await MakeImageAsync(kind, clusterSize, compat);
        var node = await Post("/api/v1/nodes", new { name = "q", driver = "qcow2", path = "img.qcow2" });
        Assert.Equal("qcow2", (string?)node["format"]);
        var chain = node["backing"]!.AsArray().Select(b => $"{(string)b!["path"]!}:{(string)b["format"]!}").ToArray();
        Assert.Equal(kind == "backing" ? ["base.raw:raw"] : [], chain);

        var export = await Post("/api/v1/exports", new { name = "q", node = "q", writable = true });
        var uri = (string)export["uri"]!;
        await Io("raw", uri, s_writes);
        await Io("raw", Full("model.raw"), s_writes);
        // Read back through the export while the node is open: what qemu-io wrote is there.
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-r", uri, "-c", "read -P 0x44 5242880 2097152", "-c", "read -P 0 8388608 1048576");
        await Delete("/api/v1/exports/q");
        await Delete("/api/v1/nodes/q");

        await QemuImg.AssertCleanAsync(Full("img.qcow2"));
        await QemuImg.AssertSameAsRawAsync(Full("img.qcow2"), Full("model.raw"));
        var info = await QemuImg.InfoAsync(Full("img.qcow2"));
        Assert.Equal(clusterSize, info.GetProperty("cluster-size").GetInt32());
        Assert.Equal(compat, info.GetProperty("format-specific").GetProperty("data").GetProperty("compat").GetString());
    }

    [QemuToolsTheory]
    [InlineData(4096)]
    [InlineData(65536)]
    [InlineData(2097152)]
    public async Task An_image_we_create_on_a_backing_file_is_read_by_qemu_as_we_wrote_it(int clusterSize)
    {
        Directory.CreateDirectory(Full("tmpl"));
        await QemuImg.RunAsync("create", "-f", "qcow2", Full("tmpl/base.qcow2"), Size.ToString());
        await Io("qcow2", Full("tmpl/base.qcow2"), ["write -P 0x7e 0 16777216"]);
        var node = await Post("/api/v1/nodes", new { name = "q", driver = "qcow2", path = "vm/q.qcow2", create = new { size = Size, clusterSize, backing = "tmpl/base.qcow2" } });
        Assert.Equal("tmpl/base.qcow2", (string?)node["backing"]![0]!["path"]);
        Assert.Equal("qcow2", (string?)node["backing"]![0]!["format"]);
        await QemuImg.RunAsync("convert", "-f", "qcow2", "-O", "raw", Full("tmpl/base.qcow2"), Full("model.raw"));
        var export = await Post("/api/v1/exports", new { name = "q", node = "q", writable = true });
        await Io("raw", (string)export["uri"]!, s_writes);
        await Io("raw", Full("model.raw"), s_writes);
        await Delete("/api/v1/exports/q");
        await Delete("/api/v1/nodes/q");

        var info = await QemuImg.InfoAsync(Full("vm/q.qcow2"));
        Assert.Equal("../tmpl/base.qcow2", info.GetProperty("backing-filename").GetString());
        Assert.Equal("qcow2", info.GetProperty("backing-filename-format").GetString());
        Assert.Equal(clusterSize, info.GetProperty("cluster-size").GetInt32());
        await QemuImg.AssertCleanAsync(Full("vm/q.qcow2"));
        await QemuImg.AssertSameAsRawAsync(Full("vm/q.qcow2"), Full("model.raw"));
        // qemu-io reads it through its chain as well.
        await InteropTools.RunOkAsync("qemu-io", "-f", "qcow2", "-r", Full("vm/q.qcow2"), "-c", "read -P 0x7e 4194304 65536", "-c", "read -P 0x44 5242880 2097152");
    }

    /// <summary>
    /// A mirror of <paramref name="source"/> ("qcow2", "raw", "qcow2-backing") to a target of
    /// <paramref name="target"/> ("qcow2", "raw", "qcow2-backing": an empty overlay on the same base)
    /// with <paramref name="sync"/>; REST writes land while the job runs and after it is ready; at ready
    /// the job is cancelled (the target keeps the copy) and qemu-img compares both images.
    /// </summary>
    [QemuToolsTheory]
    [InlineData("qcow2", "qcow2", "full")]
    [InlineData("qcow2", "raw", "full")]
    [InlineData("raw", "qcow2", "full")]
    [InlineData("qcow2-backing", "qcow2", "full")]
    [InlineData("qcow2-backing", "qcow2-backing", "top")]
    [InlineData("qcow2-backing", "qcow2-backing", "none")]
    [InlineData("qcow2", "qcow2", "top")]
    public async Task Mirror_targets_compare_equal_with_qemu_img(string source, string target, string sync)
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        if (source == "qcow2-backing" || target == "qcow2-backing")
        {
            await QemuImg.RunAsync("create", "-f", "raw", Full("base.raw"), Size.ToString());
            await Io("raw", Full("base.raw"), ["write -P 0xb2 0 8388608", "write -P 0xb3 12582912 4194304"]);
        }
        await CreateAsync("src", source);
        // A fresh overlay is all the source holds for sync=none: the target starts equal to it.
        if (sync != "none")
        {
            var random = new Random(11);
            for (var i = 0; i < 12; i++)
                await WriteAsync("src", random.NextInt64(0, Size - 300_000), random.Next(1, 300_000), random);
        }
        await CreateAsync("dst", target);

        await Post("/api/v1/jobs/mirror", new { id = "m", device = "src", target = "dst", sync, speed = 1 });
        var writes = new Random(23);
        for (var i = 0; i < 6; i++)
            await WriteAsync("src", writes.NextInt64(0, Size - 100_000), writes.Next(1, 100_000), writes);
        await ServiceFactory.SendAsync(_http, HttpMethod.Patch, "/api/v1/jobs/m", new { speed = 0 }, HttpStatusCode.OK);
        await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        for (var i = 0; i < 6; i++)
            await WriteAsync("src", writes.NextInt64(0, Size - 100_000), writes.Next(1, 100_000), writes);
        await Post("/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
        await Delete("/api/v1/nodes/src");
        await Delete("/api/v1/nodes/dst");

        foreach (var (name, kind) in new[] { ("src", source), ("dst", target) })
        {
            if (kind != "raw")
                await QemuImg.AssertCleanAsync(Full(ImageOf(name, kind)));
        }
        var compare = await InteropTools.RunAsync("qemu-img",
            ["compare", "-f", FormatOf(source), "-F", FormatOf(target), Full(ImageOf("src", source)), Full(ImageOf("dst", target))]);
        Assert.True(compare.ExitCode == 0, "qemu-img compare: " + compare.Describe());
        if (sync == "top" && source == "qcow2-backing")
        {
            // Only the top layer was copied: the target's own layer holds no more than the source's.
            var sourceMap = await QemuImg.MapAsync(Full(ImageOf("src", source)));
            var targetMap = await QemuImg.MapAsync(Full(ImageOf("dst", target)));
            Assert.True(TopLayerBytes(targetMap) <= TopLayerBytes(sourceMap), $"target top layer {TopLayerBytes(targetMap)} > source {TopLayerBytes(sourceMap)}");
        }
    }

    private static string ImageOf(string name, string kind) => kind == "raw" ? $"{name}.img" : $"{name}.qcow2";

    private static string FormatOf(string kind) => kind == "raw" ? "raw" : "qcow2";

    /// <summary>Bytes qemu-img map reports as held by the image itself (depth 0) as data.</summary>
    private static long TopLayerBytes(System.Text.Json.JsonElement map) =>
        map.EnumerateArray().Where(e => e.GetProperty("depth").GetInt32() == 0 && e.GetProperty("data").GetBoolean()).Sum(e => e.GetProperty("length").GetInt64());

    private Task CreateAsync(string name, string kind) => kind switch
    {
        "raw" => Post("/api/v1/nodes", new { name, driver = "raw", path = ImageOf(name, kind), create = new { size = Size } }),
        "qcow2" => Post("/api/v1/nodes", new { name, driver = "qcow2", path = ImageOf(name, kind), create = new { size = Size } }),
        _ => Post("/api/v1/nodes", new { name, driver = "qcow2", path = ImageOf(name, kind), create = new { size = Size, backing = "base.raw", backingFormat = "raw" } }),
    };

    private async Task WriteAsync(string node, long offset, int length, Random random)
    {
        var data = new byte[length];
        random.NextBytes(data);
        using var content = new ByteArrayContent(data);
        using var r = await _http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }
}
