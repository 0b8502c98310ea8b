using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Interop.Tests.Nbd;
using BlockMirror.Interop.Tests.Service;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// Issue 14 item 3: bitmaps stored in qcow2 images, both ways between the service and QEMU's tools.
/// Bitmaps qemu-img added and qemu-io dirtied are loaded by a node with the same extents; the
/// service's persistent bitmaps are in the image once the node is closed (qemu-img info lists them,
/// qemu-img check is clean, qemu-nbd -B serves the same extents); a bitmap left in use and one removed
/// while the service was down are reported inconsistent with their reason, never guessed.
/// </summary>
public sealed class Qcow2BitmapInteropTests : IAsyncLifetime
{
    private const long Size = 16L << 20;
    private readonly string _dataDir = Directory.CreateTempSubdirectory("blockmirror-qcow2-bitmaps-").FullName;
    private ServiceFactory _factory = null!;
    private HttpClient _http = null!;

    public Task InitializeAsync()
    {
        StartService();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _factory.DisposeAsync();
        Directory.Delete(_dataDir, recursive: true);
    }

    private void StartService()
    {
        _factory = new ServiceFactory(_dataDir);
        _http = _factory.CreateClient();
    }

    /// <summary>A clean stop (the host's shutdown) and a new service on the same data folder.</summary>
    private async Task StopServiceAsync() => await _factory.DisposeAsync();

    private string Full(string relative) => Path.Combine(_factory.ImageRoot, relative);

    private Task<JsonNode> Send(HttpMethod method, string url, object? body, HttpStatusCode expected) =>
        ServiceFactory.SendAsync(_http, method, url, body, expected);

    private async Task<List<(long, long)>> ApiExtentsAsync(string node, string bitmap)
    {
        var extents = await Send(HttpMethod.Get, $"/api/v1/nodes/{node}/bitmaps/{bitmap}/extents?offset=0&length={Size}", null, HttpStatusCode.OK);
        return [.. extents["items"]!.AsArray().Select(e => ((long)e!["offset"]!, (long)e["length"]!))];
    }

    /// <summary>The dirty extents qemu-nbd -B serves for a bitmap of the image, as nbdinfo --map shows them.</summary>
    private async Task<List<(long, long)>> QemuNbdExtentsAsync(string image, string bitmap)
    {
        var socket = Path.Combine(_dataDir, "qemu-nbd.sock");
        await using var server = await BackgroundTool.StartAsync("qemu-nbd", socket, "-r", "-t", "-f", "qcow2", "-B", bitmap, "-x", "e", $"--socket={socket}", image);
        var map = await InteropTools.RunOkAsync("nbdinfo", $"--map=qemu:dirty-bitmap:{bitmap}", $"nbd+unix:///e?socket={socket}");
        var dirty = new List<(long, long)>();
        foreach (var line in map.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length >= 3 && f[2] == "1")
                dirty.Add((long.Parse(f[0]), long.Parse(f[1])));
        }
        return dirty;
    }

    /// <summary>The bitmaps qemu-img info lists (-U: the image may be open in the service): name → (granularity, flags).</summary>
    private static async Task<Dictionary<string, (long Granularity, string[] Flags)>> QemuBitmapsAsync(string image)
    {
        var info = await InteropTools.RunOkAsync("qemu-img", "info", "-U", "--output=json", image);
        var result = new Dictionary<string, (long, string[])>();
        using var doc = JsonDocument.Parse(info.Stdout);
        if (!doc.RootElement.GetProperty("format-specific").GetProperty("data").TryGetProperty("bitmaps", out var bitmaps))
            return result;
        foreach (var b in bitmaps.EnumerateArray())
            result[b.GetProperty("name").GetString()!] = (b.GetProperty("granularity").GetInt64(), [.. b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()!)]);
        return result;
    }

    private static Task Io(string image, params string[] commands) =>
        InteropTools.RunOkAsync("qemu-io", ["-f", "qcow2", image, .. commands.SelectMany(c => new[] { "-c", c })]);

    [NbdInteropFact("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")]
    public async Task Bitmaps_qemu_img_added_and_qemu_io_dirtied_are_loaded_with_the_same_extents()
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        var image = Full("vm.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", image, Size.ToString());
        await QemuImg.RunAsync("bitmap", "--add", image, "b1");
        await Io(image, "write -P 0x11 1048576 300000", "write -P 0x12 8388608 4096");
        await QemuImg.RunAsync("bitmap", "--add", "-g", "4096", image, "b2");
        await Io(image, "write -P 0x13 2097152 4096");
        await QemuImg.RunAsync("bitmap", "--disable", image, "b2");
        await Io(image, "write -P 0x14 12582912 4096"); // b1 only: b2 is disabled
        await QemuImg.RunAsync("bitmap", "--add", image, "off");
        await QemuImg.RunAsync("bitmap", "--disable", image, "off");
        await QemuImg.RunAsync("bitmap", "--enable", image, "off");
        await Io(image, "write -P 0x15 3145728 512");
        var qemuB1 = await QemuNbdExtentsAsync(image, "b1");
        var qemuB2 = await QemuNbdExtentsAsync(image, "b2");
        var qemuOff = await QemuNbdExtentsAsync(image, "off");
        Assert.Equal([(1048576L, 327680L), (2097152L, 65536L), (3145728L, 65536L), (8388608L, 65536L), (12582912L, 65536L)], qemuB1);
        Assert.Equal([(2097152L, 4096L)], qemuB2);
        Assert.Equal([(3145728L, 65536L)], qemuOff);

        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "vm", driver = "qcow2", path = "vm.qcow2" }, HttpStatusCode.Created);
        var b1 = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/b1", null, HttpStatusCode.OK);
        Assert.True((bool)b1["persistent"]!);
        Assert.True((bool)b1["recording"]!);
        Assert.False((bool)b1["inconsistent"]!);
        Assert.Equal(65536, (long)b1["granularity"]!);
        var b2 = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/b2", null, HttpStatusCode.OK);
        Assert.False((bool)b2["recording"]!);
        Assert.Equal(4096, (long)b2["granularity"]!);
        Assert.Equal(qemuB1, await ApiExtentsAsync("vm", "b1"));
        Assert.Equal(qemuB2, await ApiExtentsAsync("vm", "b2"));
        Assert.Equal(qemuOff, await ApiExtentsAsync("vm", "off"));
        // Open read-write here: the image says they are in use, so no other program trusts their bits meanwhile.
        Assert.All((await QemuBitmapsAsync(image)).Values, b => Assert.Contains("in-use", b.Flags));

        // Written through the service: b1 records, b2 (disabled) does not; at the close both go back clean.
        await WriteAsync("vm", 15728640, 4096);
        await Send(HttpMethod.Delete, "/api/v1/nodes/vm", null, HttpStatusCode.NoContent);
        var listed = await QemuBitmapsAsync(image);
        Assert.Equal(["auto"], listed["b1"].Flags);
        Assert.Empty(listed["b2"].Flags);
        await QemuImg.AssertCleanAsync(image);
        Assert.Equal([.. qemuB1, (15728640L, 65536L)], await QemuNbdExtentsAsync(image, "b1"));
        Assert.Equal(qemuB2, await QemuNbdExtentsAsync(image, "b2"));
    }

    private async Task WriteAsync(string node, long offset, int length)
    {
        using var content = new ByteArrayContent(Enumerable.Repeat((byte)0x5a, length).ToArray());
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/octet-stream");
        using var response = await _http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
    }

    [NbdInteropFact("qemu-img", "qemu-nbd", "nbdinfo")]
    public async Task Our_persistent_bitmap_is_in_the_image_for_qemu_after_the_node_is_removed_and_after_a_stop()
    {
        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "vm", driver = "qcow2", path = "vm.qcow2", create = new { size = Size } }, HttpStatusCode.Created);
        await Send(HttpMethod.Post, "/api/v1/nodes/vm/bitmaps", new { name = "p", granularity = 65536, persistent = true }, HttpStatusCode.Created);
        await Send(HttpMethod.Post, "/api/v1/nodes/vm/bitmaps", new { name = "q", granularity = 4096, persistent = true, disabled = true }, HttpStatusCode.Created);
        await Send(HttpMethod.Post, "/api/v1/nodes/vm/bitmaps", new { name = "gone", persistent = true }, HttpStatusCode.Created);
        // Named in the image, in use, as soon as it exists; removed from it at once.
        Assert.Equal(["gone", "p", "q"], (await QemuBitmapsAsync(Full("vm.qcow2"))).Keys.Order());
        await Send(HttpMethod.Delete, "/api/v1/nodes/vm/bitmaps/gone", null, HttpStatusCode.NoContent);
        Assert.Equal(["p", "q"], (await QemuBitmapsAsync(Full("vm.qcow2"))).Keys.Order());
        await WriteAsync("vm", 100000, 4096);
        await WriteAsync("vm", 5L << 20, 200000);
        var ours = await ApiExtentsAsync("vm", "p");
        Assert.Equal([(65536L, 65536L), (5242880L, 262144L)], ours);

        // A clean stop stores them; the image is then QEMU's to read.
        await StopServiceAsync();
        var listed = await QemuBitmapsAsync(Full("vm.qcow2"));
        Assert.Equal(65536L, listed["p"].Granularity);
        Assert.Equal(["auto"], listed["p"].Flags);
        Assert.Equal(4096L, listed["q"].Granularity);
        Assert.Empty(listed["q"].Flags);
        await QemuImg.AssertCleanAsync(Full("vm.qcow2"));
        Assert.Equal(ours, await QemuNbdExtentsAsync(Full("vm.qcow2"), "p"));
        Assert.Empty(await QemuNbdExtentsAsync(Full("vm.qcow2"), "q"));

        // Another bitmap added while the service is down changes nothing of ours: p is proven by the image.
        await QemuImg.RunAsync("bitmap", "--add", Full("vm.qcow2"), "theirs");
        StartService();
        var p = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/p", null, HttpStatusCode.OK);
        Assert.False((bool)p["inconsistent"]!, (string?)p["inconsistentReason"]);
        Assert.Equal(ours, await ApiExtentsAsync("vm", "p"));
        var theirs = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/theirs", null, HttpStatusCode.OK);
        Assert.True((bool)theirs["persistent"]!);
        Assert.False((bool)theirs["inconsistent"]!);

        // The node removed (blockdev-del): stored as at a stop.
        await WriteAsync("vm", 10L << 20, 1);
        await Send(HttpMethod.Delete, "/api/v1/nodes/vm", null, HttpStatusCode.NoContent);
        await QemuImg.AssertCleanAsync(Full("vm.qcow2"));
        Assert.Equal([.. ours, (10485760L, 65536L)], await QemuNbdExtentsAsync(Full("vm.qcow2"), "p"));
        Assert.Equal([(10485760L, 65536L)], await QemuNbdExtentsAsync(Full("vm.qcow2"), "theirs"));
    }

    [NbdInteropFact("qemu-img")]
    public async Task Bitmaps_changed_by_qemu_img_while_the_service_was_down_are_reported_not_guessed()
    {
        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "vm", driver = "qcow2", path = "vm.qcow2", create = new { size = Size } }, HttpStatusCode.Created);
        foreach (var name in new[] { "removed", "cleared", "merged", "kept" })
            await Send(HttpMethod.Post, "/api/v1/nodes/vm/bitmaps", new { name, persistent = true }, HttpStatusCode.Created);
        await WriteAsync("vm", 0, 4096);
        await StopServiceAsync();

        var image = Full("vm.qcow2");
        await QemuImg.RunAsync("bitmap", "--remove", image, "removed");
        await QemuImg.RunAsync("bitmap", "--clear", image, "cleared");
        await QemuImg.RunAsync("bitmap", "--add", image, "extra");
        await Io(image, "write 8388608 4096"); // dirties every enabled bitmap in the image, "merged" included
        await QemuImg.RunAsync("bitmap", "--merge", "extra", image, "extra");
        StartService();

        async Task<string?> ReasonOf(string name)
        {
            var b = await Send(HttpMethod.Get, $"/api/v1/nodes/vm/bitmaps/{name}", null, HttpStatusCode.OK);
            return (bool)b["inconsistent"]! ? (string?)b["inconsistentReason"] : null;
        }
        Assert.Contains("removed from the image while the service was stopped", await ReasonOf("removed"));
        Assert.Contains("differ from the service's record", await ReasonOf("cleared"));
        Assert.Contains("differ from the service's record", await ReasonOf("merged"));
        Assert.Contains("differ from the service's record", await ReasonOf("kept"));
        Assert.Null(await ReasonOf("extra"));
        Assert.Equal([(8388608L, 65536L)], await ApiExtentsAsync("vm", "extra"));
    }

    [NbdInteropFact("qemu-img")]
    public async Task A_bitmap_left_in_use_by_a_writer_that_did_not_close_comes_back_inconsistent()
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        var image = Full("vm.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", image, Size.ToString());
        await QemuImg.RunAsync("bitmap", "--add", image, "b1");
        // A writer opens it read-write (which marks it in use, as QEMU does) and goes away without storing it.
        await using (var writer = Qcow2Image.Open(image, readOnly: false))
            await writer.WriteAsync(0, new byte[65536]);
        Assert.Contains("in-use", (await QemuBitmapsAsync(image))["b1"].Flags);
        await QemuImg.AssertCleanAsync(image);

        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "vm", driver = "qcow2", path = "vm.qcow2" }, HttpStatusCode.Created);
        var b1 = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/b1", null, HttpStatusCode.OK);
        Assert.True((bool)b1["inconsistent"]!);
        Assert.Contains("in use", (string?)b1["inconsistentReason"]);
        // QEMU's rule: an inconsistent bitmap can only be removed, and goes from the image with it.
        await Send(HttpMethod.Delete, "/api/v1/nodes/vm/bitmaps/b1", null, HttpStatusCode.NoContent);
        Assert.Empty(await QemuBitmapsAsync(image));
    }

    /// <summary>The in-use flag QEMU itself leaves: qemu-io holds the image read-write (it marked b1 in use at open) and is killed with SIGKILL.</summary>
    [NbdInteropFact("qemu-img", "qemu-io")]
    public async Task A_bitmap_a_killed_qemu_io_held_comes_back_inconsistent()
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        var image = Full("vm.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", image, Size.ToString());
        await QemuImg.RunAsync("bitmap", "--add", image, "b1");
        // stdbuf: qemu-io's stdout is a pipe here, which it would buffer until it exits.
        var psi = new System.Diagnostics.ProcessStartInfo("stdbuf") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-oL", InteropTools.Require("qemu-io"), "-f", "qcow2", image, "-c", "write -P 0x21 0 4096", "-c", "sleep 600000" })
            psi.ArgumentList.Add(a);
        using (var qemu = await ToolLauncher.StartAsync(psi))
        {
            // "wrote ..." is printed once the write is done: the image is open read-write, b1 marked in use.
            var line = await qemu.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.StartsWith("wrote 4096/4096", line);
            qemu.Kill();
            await qemu.WaitForExitAsync();
        }
        Assert.Contains("in-use", (await QemuBitmapsAsync(image))["b1"].Flags);

        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "vm", driver = "qcow2", path = "vm.qcow2" }, HttpStatusCode.Created);
        var b1 = await Send(HttpMethod.Get, "/api/v1/nodes/vm/bitmaps/b1", null, HttpStatusCode.OK);
        Assert.True((bool)b1["inconsistent"]!);
        Assert.Contains("crashed", (string?)b1["inconsistentReason"]);
        Assert.False((bool)b1["recording"]!);
        // QEMU agrees: it will not serve it.
        await Send(HttpMethod.Delete, "/api/v1/nodes/vm", null, HttpStatusCode.NoContent);
        var refused = await InteropTools.RunAsync("qemu-nbd", ["-r", "-f", "qcow2", "-B", "b1", "--fork", $"--socket={Path.Combine(_dataDir, "refused.sock")}", image]);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("inconsistent", refused.Stderr, StringComparison.OrdinalIgnoreCase);
    }

    [NbdInteropFact("qemu-img")]
    public async Task A_persistent_bitmap_on_a_version_2_image_is_refused_with_qemus_message()
    {
        Directory.CreateDirectory(_factory.ImageRoot);
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", "compat=0.10", Full("v2.qcow2"), Size.ToString());
        await Send(HttpMethod.Post, "/api/v1/nodes", new { name = "v2", driver = "qcow2", path = "v2.qcow2" }, HttpStatusCode.Created);
        var problem = await Send(HttpMethod.Post, "/api/v1/nodes/v2/bitmaps", new { name = "p", persistent = true }, HttpStatusCode.BadRequest);
        Assert.Equal("bitmap-not-storable", (string?)problem["code"]);
        Assert.Contains("Cannot store dirty bitmaps in qcow2 v2 files", (string?)problem["detail"]);
        // A bitmap that lives in memory only is fine.
        await Send(HttpMethod.Post, "/api/v1/nodes/v2/bitmaps", new { name = "m" }, HttpStatusCode.Created);
    }
}
