using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// Raw nodes on host block devices (issue 14 item 4), on loop devices: which paths Storage:Devices
/// lets through, what a device node does (size, I/O, zeroes, discards, locks, bitmaps, mirrors), all
/// through the service's REST API and its NBD export, checked against the loop's backing file.
/// </summary>
public sealed class BlockDeviceNodeTests : IAsyncLifetime
{
    private const long SizeA = 64L << 20;
    private const long SizeB = 16L << 20;

    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-devices-").FullName;
    private readonly List<LoopDevice> _loops = [];
    private ServiceFactory _factory = null!;
    private HttpClient _http = null!;
    private LoopDevice _a = null!;
    private LoopDevice _b = null!;

    /// <summary>An allowed place for links: Storage:Devices matches every entry in it.</summary>
    private string Links => Path.Combine(_dir, "links");

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(Links);
        // Attached before anything can fail, and each one remembered at once, so DisposeAsync detaches it.
        _a = await AttachAsync(SizeA, "a");
        _b = await AttachAsync(SizeB, "b");
        _factory = NewService(null);
        _http = _factory.CreateClient();
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (_factory is not null)
                await _factory.DisposeAsync();
        }
        finally
        {
            foreach (var loop in _loops)
                await loop.DisposeAsync();
            Directory.Delete(_dir, recursive: true);
        }
    }

    private async Task<LoopDevice> AttachAsync(long size, string name)
    {
        var loop = await LoopDevice.AttachAsync(_dir, size, name);
        _loops.Add(loop);
        return loop;
    }

    /// <summary>A service that allows device A by its exact path, anything in <see cref="Links"/>, and /dev/zero (a character device).</summary>
    private ServiceFactory NewService(string? dataDir)
    {
        var factory = new ServiceFactory(dataDir);
        factory.Settings["Storage:Devices:0"] = _a.Device;
        factory.Settings["Storage:Devices:1"] = Links + "/*";
        factory.Settings["Storage:Devices:2"] = "/dev/zero";
        return factory;
    }

    private Task<JsonNode> SendAsync(HttpMethod method, string url, object? body, HttpStatusCode expected) =>
        ServiceFactory.SendAsync(_http, method, url, body, expected);

    private Task<JsonNode> AddNodeAsync(object body) => SendAsync(HttpMethod.Post, "/api/v1/nodes", body, HttpStatusCode.Created);

    private async Task ExpectProblemAsync(HttpMethod method, string url, object? body, HttpStatusCode status, string code)
    {
        var problem = await SendAsync(method, url, body, status);
        Assert.Equal(code, (string?)problem["code"]);
    }

    private async Task WriteAsync(string node, long offset, byte[] data)
    {
        using var content = new ByteArrayContent(data);
        using var r = await _http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
    }

    private async Task<byte[]> ReadAsync(string node, long offset, long length)
    {
        using var r = await _http.GetAsync($"/api/v1/nodes/{node}/data?offset={offset}&length={length}");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return await r.Content.ReadAsByteArrayAsync();
    }

    private static byte[] Pattern(int seed, int length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [LoopDeviceFact]
    public async Task Only_devices_Storage_Devices_matches_both_as_given_and_where_they_lead_are_opened()
    {
        // Listed by its exact path: opened, shown as a device with the device's size.
        var node = await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
        Assert.True((bool)node["device"]!);
        Assert.Equal(_a.Device, (string?)node["path"]);
        Assert.Equal(SizeA, (long)node["size"]!);
        Assert.Equal(SizeA, (long)node["allocatedBytes"]!);
        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/a", null, HttpStatusCode.NoContent);

        // A device nobody listed, by its own name.
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "b", driver = "raw", path = _b.Device }, HttpStatusCode.BadRequest, "device-not-allowed");
        // A link in an allowed place (the glob) to a listed device: both match.
        File.CreateSymbolicLink(Path.Combine(Links, "disk-a"), _a.Device);
        node = await AddNodeAsync(new { name = "by-link", driver = "raw", path = Path.Combine(Links, "disk-a") });
        Assert.True((bool)node["device"]!);
        Assert.Equal(SizeA, (long)node["size"]!);
        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/by-link", null, HttpStatusCode.NoContent);
        // A link in an allowed place to a device nobody listed: where it leads does not match.
        File.CreateSymbolicLink(Path.Combine(Links, "disk-b"), _b.Device);
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "b", driver = "raw", path = Path.Combine(Links, "disk-b") }, HttpStatusCode.BadRequest, "device-not-allowed");
        // A link outside every allowed place to a listed device: the path as given does not match.
        var elsewhere = Directory.CreateDirectory(Path.Combine(_dir, "elsewhere")).FullName;
        File.CreateSymbolicLink(Path.Combine(elsewhere, "disk-a"), _a.Device);
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a", driver = "raw", path = Path.Combine(elsewhere, "disk-a") }, HttpStatusCode.BadRequest, "device-not-allowed");
        // A path that is not in its plain form is refused before anything is resolved.
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a", driver = "raw", path = Links + "/../links/disk-a" }, HttpStatusCode.BadRequest, "device-not-allowed");

        // Only block devices at an allowed path: a regular file and a character device are not.
        await File.WriteAllBytesAsync(Path.Combine(Links, "file.img"), new byte[4096]);
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "f", driver = "raw", path = Path.Combine(Links, "file.img") }, HttpStatusCode.BadRequest, "not-a-block-device");
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "z", driver = "raw", path = "/dev/zero" }, HttpStatusCode.BadRequest, "not-a-block-device");
        // An allowed name where nothing is.
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "n", driver = "raw", path = Path.Combine(Links, "missing") }, HttpStatusCode.NotFound, "image-not-found");

        // Every refusal changed nothing.
        var nodes = await SendAsync(HttpMethod.Get, "/api/v1/nodes", null, HttpStatusCode.OK);
        Assert.Empty(nodes["items"]!.AsArray());
    }

    [LoopDeviceFact]
    public async Task Devices_are_never_created_nor_deleted()
    {
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a", driver = "raw", path = _a.Device, create = new { size = SizeA } }, HttpStatusCode.BadRequest, "device-not-creatable");
        // Any other absolute path with create is outside the root, as it always was.
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "x", driver = "raw", path = Path.Combine(_dir, "new.img"), create = new { size = 512 } }, HttpStatusCode.BadRequest, "path-outside-root");
        Assert.False(File.Exists(Path.Combine(_dir, "new.img")));

        await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
        await ExpectProblemAsync(HttpMethod.Delete, "/api/v1/nodes/a?deleteImage=true", null, HttpStatusCode.BadRequest, "device-not-deletable");
        await SendAsync(HttpMethod.Get, "/api/v1/nodes/a", null, HttpStatusCode.OK);
        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/a", null, HttpStatusCode.NoContent);
        Assert.True(File.Exists(_a.Device));
    }

    [LoopDeviceFact("qemu-io", "qemu-nbd")]
    public async Task A_device_node_keeps_a_second_opener_and_qemu_out_until_it_is_removed()
    {
        await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
        // In this process: the exclusive open (read-write) and the OFD lock bytes (read-only) refuse it.
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a2", driver = "raw", path = _a.Device }, HttpStatusCode.Conflict, "image-locked");
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a3", driver = "raw", path = _a.Device, readOnly = true }, HttpStatusCode.Conflict, "image-locked");
        // QEMU honours the same lock bytes on the device node.
        var qemu = await InteropTools.RunAsync("qemu-io", ["-f", "raw", _a.Device, "-c", "write -P 0x11 0 4096"]);
        Assert.NotEqual(0, qemu.ExitCode);
        Assert.Contains("lock", qemu.Stderr, StringComparison.OrdinalIgnoreCase);

        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/a", null, HttpStatusCode.NoContent);
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", _a.Device, "-c", "write -P 0x11 0 4096");
        // And while QEMU holds it, the service is refused in turn (-t: the start-up probe's connection
        // must not end a qemu-nbd that exits after its last client, releasing the device).
        await using var holder = await BackgroundTool.StartAsync("qemu-nbd", Path.Combine(_dir, "hold.sock"), "-f", "raw", "-t", "--socket=" + Path.Combine(_dir, "hold.sock"), _a.Device);
        await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a", driver = "raw", path = _a.Device }, HttpStatusCode.Conflict, "image-locked");
    }

    [LoopDeviceFact("mkfs.ext4")]
    public async Task A_mounted_device_is_refused_read_write_by_the_kernels_claim_and_opened_read_only()
    {
        // The OFD lock bytes know nothing of a mount; the exclusive open (O_EXCL) is what the kernel
        // refuses while a file system holds the device.
        await InteropTools.RunOkAsync("mkfs.ext4", "-q", "-F", _a.Device);
        var mountPoint = Directory.CreateDirectory(Path.Combine(_dir, "mnt")).FullName;
        await InteropTools.RunOkAsync("mount", _a.Device, mountPoint);
        try
        {
            await ExpectProblemAsync(HttpMethod.Post, "/api/v1/nodes", new { name = "a", driver = "raw", path = _a.Device }, HttpStatusCode.Conflict, "image-locked");
            var node = await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device, readOnly = true });
            Assert.True((bool)node["readOnly"]!);
            Assert.True((bool)node["device"]!);
            await SendAsync(HttpMethod.Delete, "/api/v1/nodes/a", null, HttpStatusCode.NoContent);
        }
        finally
        {
            await InteropTools.RunAsync("umount", [mountPoint]);
        }
        // Unmounted, the device is the service's to write again.
        await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
    }

    [LoopDeviceFact("qemu-io", "qemu-img")]
    public async Task Writes_zeroes_and_discards_through_REST_and_NBD_reach_the_device_exactly()
    {
        // The device starts full of old data, which a device (unlike a new file) keeps.
        var model = Pattern(1, (int)SizeA);
        await File.WriteAllBytesAsync(_a.BackingFile, model);
        var node = await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
        Assert.Equal(SizeA, (long)node["size"]!);
        Assert.Equal(SizeA, (long)node["allocatedBytes"]!);

        // REST: writes (unaligned too), zeroes with and without unmap (partial blocks at the ends), a discard.
        var random = new Random(7);
        for (var i = 0; i < 16; i++)
        {
            var data = Pattern(100 + i, random.Next(1, 300_000));
            var offset = random.NextInt64(0, SizeA - data.Length);
            await WriteAsync("a", offset, data);
            data.CopyTo(model, offset);
        }
        foreach (var (offset, length, unmap) in new[] { (1_000_001L, 3_000_000L, true), (9_437_184L, 1_048_576L, true), (20_000_000L, 777_777L, false), (30_408_704L, 4096L, false), (511L, 2L, true) })
        {
            await SendAsync(HttpMethod.Post, "/api/v1/nodes/a/zero", new { offset, length, mayUnmap = unmap }, HttpStatusCode.NoContent);
            Array.Clear(model, (int)offset, (int)length);
        }
        // A loop device punches its file on discard, so whole blocks read as zeroes after it.
        await SendAsync(HttpMethod.Post, "/api/v1/nodes/a/discard", new { offset = 40L << 20, length = 1L << 20 }, HttpStatusCode.NoContent);
        Array.Clear(model, 40 << 20, 1 << 20);
        Assert.Equal(model.AsSpan(0, 2 << 20).ToArray(), await ReadAsync("a", 0, 2 << 20));
        Assert.Equal(model.AsSpan(40 << 20, 2 << 20).ToArray(), await ReadAsync("a", 40 << 20, 2 << 20));

        // NBD: qemu-io writes, zeroes (with and without unmap) and discards through the export, then flushes.
        var export = await SendAsync(HttpMethod.Post, "/api/v1/exports", new { name = "a", node = "a" }, HttpStatusCode.Created);
        var uri = (string)export["uri"]!;
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", uri,
            "-c", "write -P 0x5a 5000000 123457",
            "-c", "write -z 12582912 65536",
            "-c", "write -z -u 14680064 1048576",
            "-c", "discard 50331648 2097152",
            "-c", "flush");
        model.AsSpan(5_000_000, 123_457).Fill(0x5a);
        Array.Clear(model, 12_582_912, 65_536);
        Array.Clear(model, 14_680_064, 1_048_576);
        Array.Clear(model, 50_331_648, 2_097_152);
        var read = await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-r", uri, "-c", "read -P 0x5a 5000000 123457", "-c", "read -P 0 14680064 1048576");
        Assert.DoesNotContain("Pattern verification failed", read.Stdout, StringComparison.Ordinal);

        // Block status: every byte of a device is data, also where it was just zeroed or discarded.
        var extents = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a/extents", null, HttpStatusCode.OK);
        var items = extents["items"]!.AsArray();
        Assert.Single(items);
        Assert.Equal("data", (string?)items[0]!["type"]);
        Assert.Equal(SizeA, (long)items[0]!["length"]!);

        // The NBD flush reached the device, whose writes reached its backing file: byte for byte the model.
        var expected = Path.Combine(_dir, "model.img");
        await File.WriteAllBytesAsync(expected, model);
        await InteropTools.RunOkAsync("qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", _a.BackingFile, expected);
    }

    [LoopDeviceFact]
    public async Task A_persistent_bitmap_on_a_device_comes_back_exact_after_a_restart()
    {
        await AddNodeAsync(new { name = "a", driver = "raw", path = _a.Device });
        await SendAsync(HttpMethod.Post, "/api/v1/nodes/a/bitmaps", new { name = "b0", granularity = 65536, persistent = true }, HttpStatusCode.Created);
        await WriteAsync("a", 100_000, Pattern(3, 4096));
        await WriteAsync("a", 20 << 20, Pattern(4, 65536));
        var before = await ExtentsAsync();
        Assert.Equal([(65536L, 65536L), (20L << 20, 65536L)], before);

        // A clean restart in the same folder: the node reopens its device, the bitmap its checkpoint.
        var dataDir = _factory.DataDir;
        _factory.KeepDataDir = true;
        await _factory.DisposeAsync();
        _factory = NewService(dataDir);
        _factory.KeepDataDir = false;
        _http = _factory.CreateClient();

        var node = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a", null, HttpStatusCode.OK);
        Assert.True((bool)node["device"]!);
        Assert.False((bool)node["imageReplaced"]!);
        var bitmap = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a/bitmaps/b0", null, HttpStatusCode.OK);
        Assert.False((bool)bitmap["inconsistent"]!, bitmap.ToJsonString());
        Assert.Equal(before, await ExtentsAsync());
        Assert.Equal(Pattern(4, 65536), await ReadAsync("a", 20 << 20, 65536));
        // And it goes on recording.
        await WriteAsync("a", 40 << 20, Pattern(5, 512));
        Assert.Equal([.. before, (40L << 20, 65536L)], await ExtentsAsync());
    }

    private async Task<List<(long, long)>> ExtentsAsync()
    {
        var extents = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a/bitmaps/b0/extents", null, HttpStatusCode.OK);
        return [.. extents["items"]!.AsArray().Select(e => ((long)e!["offset"]!, (long)e["length"]!))];
    }

    [LoopDeviceFact]
    public async Task The_replacement_check_follows_the_device_not_its_node_in_dev()
    {
        var link = Path.Combine(Links, "disk");
        File.CreateSymbolicLink(link, _a.Device);
        await AddNodeAsync(new { name = "a", driver = "raw", path = link });
        await WriteAsync("a", 0, Pattern(6, 4096));
        // A control operation checks the node first: a device is not a file under the root, and its
        // own writes (which move the node's mtime) are no replacement.
        await SendAsync(HttpMethod.Post, "/api/v1/nodes/a/bitmaps", new { name = "b0", persistent = true }, HttpStatusCode.Created);
        var node = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a", null, HttpStatusCode.OK);
        Assert.False((bool)node["imageReplaced"]!, node.ToJsonString());

        // The link now leads to another device: the node's writes would go where the path no longer leads.
        File.Delete(link);
        File.CreateSymbolicLink(link, _b.Device);
        await SendAsync(HttpMethod.Post, "/api/v1/nodes/a/bitmaps", new { name = "b1" }, HttpStatusCode.Conflict);
        node = await SendAsync(HttpMethod.Get, "/api/v1/nodes/a", null, HttpStatusCode.OK);
        Assert.True((bool)node["imageReplaced"]!);
        Assert.Contains("another device", (string?)node["imageReplacedReason"], StringComparison.Ordinal);
    }

    [LoopDeviceFact]
    public async Task A_completed_mirror_moves_a_node_onto_a_device_and_a_restart_reopens_it_there()
    {
        // Old data on the device: where the file is a hole, the mirror must leave zeroes.
        await File.WriteAllBytesAsync(_a.BackingFile, Pattern(11, (int)SizeA));
        await AddNodeAsync(new { name = "disk", driver = "raw", path = "disk.img", create = new { size = SizeA } });
        await AddNodeAsync(new { name = "dev", driver = "raw", path = _a.Device });
        var data = Pattern(10, 3 << 20);
        await WriteAsync("disk", 5 << 20, data);
        await SendAsync(HttpMethod.Post, "/api/v1/jobs/mirror", new { id = "m", sync = "full", device = "disk", target = "dev" }, HttpStatusCode.Created);
        await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(120));
        await SendAsync(HttpMethod.Post, "/api/v1/jobs/m/complete", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);

        // The pivot: node disk now is the device (QEMU's blockdev-mirror completion); the target node is gone.
        var node = await SendAsync(HttpMethod.Get, "/api/v1/nodes/disk", null, HttpStatusCode.OK);
        Assert.True((bool)node["device"]!);
        Assert.Equal(_a.Device, (string?)node["path"]);
        await SendAsync(HttpMethod.Get, "/api/v1/nodes/dev", null, HttpStatusCode.NotFound);

        var dataDir = _factory.DataDir;
        _factory.KeepDataDir = true;
        await _factory.DisposeAsync();
        _factory = NewService(dataDir);
        _factory.KeepDataDir = false;
        _http = _factory.CreateClient();
        node = await SendAsync(HttpMethod.Get, "/api/v1/nodes/disk", null, HttpStatusCode.OK);
        Assert.True((bool)node["device"]!);
        Assert.Equal(data, await ReadAsync("disk", 5 << 20, data.Length));
        Assert.Equal(new byte[1 << 20], await ReadAsync("disk", 0, 1 << 20));
    }

    [LoopDeviceFact("qemu-img")]
    public Task Mirror_from_a_raw_file_to_a_loop_device_with_writes_during_the_job_leaves_the_device_equal() =>
        MirrorWithWritesAsync(fileIsSource: true);

    [LoopDeviceFact("qemu-img")]
    public Task Mirror_from_a_loop_device_to_a_raw_file_with_writes_during_the_job_leaves_the_file_equal() =>
        MirrorWithWritesAsync(fileIsSource: false);

    /// <summary>
    /// sync=full between a sparse raw file and device A (which starts full of old data, so the
    /// file's holes must be written to it as zeroes), with writes to the source while the job runs
    /// and after it is ready; soft-cancelled at ready, then the two compared by qemu-img.
    /// </summary>
    private async Task MirrorWithWritesAsync(bool fileIsSource)
    {
        await File.WriteAllBytesAsync(_a.BackingFile, Pattern(8, (int)SizeA));
        await AddNodeAsync(new { name = "file", driver = "raw", path = "file.img", create = new { size = SizeA } });
        await AddNodeAsync(new { name = "dev", driver = "raw", path = _a.Device });
        var (source, target) = fileIsSource ? ("file", "dev") : ("dev", "file");
        var random = new Random(9);
        for (var i = 0; i < 8; i++)
            await WriteAsync(source, random.NextInt64(0, SizeA - (1 << 20)), Pattern(200 + i, random.Next(1, 1 << 20)));

        // A throttled job, so that the writes below land while it is still copying.
        await SendAsync(HttpMethod.Post, "/api/v1/jobs/mirror", new { id = "m", sync = "full", device = source, target, speed = 32L << 20 }, HttpStatusCode.Created);
        for (var i = 0; i < 8; i++)
            await WriteAsync(source, random.NextInt64(0, SizeA - (1 << 20)), Pattern(300 + i, random.Next(1, 1 << 20)));
        await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(120));
        await WriteAsync(source, 12345, Pattern(400, 70000));
        await SendAsync(HttpMethod.Post, "/api/v1/jobs/m/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, "m", j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);

        // Closed: a device's last close writes its page cache back into the loop's file.
        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/dev", null, HttpStatusCode.NoContent);
        await SendAsync(HttpMethod.Delete, "/api/v1/nodes/file", null, HttpStatusCode.NoContent);
        await _a.FlushAsync();
        await InteropTools.RunOkAsync("qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", Path.Combine(_factory.ImageRoot, "file.img"), _a.BackingFile);
    }
}
