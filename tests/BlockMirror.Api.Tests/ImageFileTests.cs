using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Runtime.InteropServices;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// What the service opens as an image: inputs the file system refuses come back as 4xx problems
/// with a code (never a 500), only regular files are opened and never with a blocking open (a FIFO
/// used to hold the control lock forever), and a file with a second name is refused unless allowed.
/// </summary>
public sealed partial class ImageFileTests : ServiceTest
{
    /// <summary>Long enough for a loaded CI machine; an open that blocks never answers at all.</summary>
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData(1L << 44)]
    [InlineData((1L << 53) + 512)]
    [InlineData(long.MaxValue - 511)]
    public async Task A_size_beyond_the_file_systems_maximum_file_size_is_refused_with_invalid_size(long size)
    {
        using var response = await Http.PostAsJsonAsync("/api/v1/nodes", new { name = "big", driver = "raw", path = "big.img", create = new { size } });
        if (response.StatusCode == HttpStatusCode.Created)
        {
            // A file system that holds it (tmpfs takes 2^63 - 1): then it is simply an image.
            using var deleted = await Http.DeleteAsync("/api/v1/nodes/big?deleteImage=true");
            Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
            return;
        }
        await ApiClient.ExpectProblemAsync(response, 400, "invalid-size");
        Assert.False(File.Exists(Path.Combine(Factory.ImageRoot, "big.img")), "a refused create leaves no file");
        await Http.GetJsonAsync("/api/v1/nodes/big", HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task A_path_component_longer_than_the_file_system_allows_is_refused_with_invalid_path()
    {
        var name = new string('x', 300);
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = name, create = new { size = 512 } }, 400, "invalid-path");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = $"{name}/disk.img", create = new { size = 512 } }, 400, "invalid-path");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = $"dir/{name}" }, 400, "invalid-path");
        // A file where a directory should be.
        await Http.CreateNodeAsync("a", 512, "a.img");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = "a.img/b/c.img", create = new { size = 512 } }, 400, "invalid-path");
        Assert.Equal(["a"], (await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray().Select(n => (string)n!["name"]!));
    }

    [Fact]
    public async Task An_nbd_unix_socket_path_longer_than_sun_path_is_refused_with_invalid_uri()
    {
        var uri = $"nbd+unix:///export?socket=/{new string('s', 5000)}";
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "remote", driver = "nbd", uri }, 400, "invalid-uri");
    }

    [Fact]
    public async Task A_fifo_is_refused_at_once_read_only_and_read_write_and_the_control_plane_keeps_working()
    {
        Directory.CreateDirectory(Factory.ImageRoot);
        var fifo = Path.Combine(Factory.ImageRoot, "pipe");
        Assert.Equal(0, mkfifo(fifo, 0x180)); // 0600
        try
        {
            var watch = Stopwatch.StartNew();
            using (var readOnly = await PostQuicklyAsync("/api/v1/nodes", new { name = "ro", driver = "raw", path = "pipe", readOnly = true }))
                await ApiClient.ExpectProblemAsync(readOnly, 400, "not-a-regular-file");
            using (var readWrite = await PostQuicklyAsync("/api/v1/nodes", new { name = "rw", driver = "raw", path = "pipe" }))
                await ApiClient.ExpectProblemAsync(readWrite, 400, "not-a-regular-file");
            // The control lock is free: every other control call still answers.
            using (var created = await PostQuicklyAsync("/api/v1/nodes", new { name = "disk0", driver = "raw", path = "disk0.img", create = new { size = 1 << 20 } }))
                Assert.Equal(HttpStatusCode.Created, created.StatusCode);
            using (var bitmap = await PostQuicklyAsync("/api/v1/nodes/disk0/bitmaps", new { name = "b0" }))
                Assert.Equal(HttpStatusCode.Created, bitmap.StatusCode);
            Assert.True(watch.Elapsed < Quick, $"took {watch.Elapsed}");
            Assert.Equal(["disk0"], (await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray().Select(n => (string)n!["name"]!));
        }
        finally
        {
            // On a service that opened the FIFO blocking, a writer releases the stuck open, so the
            // host can stop; O_WRONLY|O_NONBLOCK fails at once (ENXIO) where nobody waits.
            var fd = open(fifo, 0x801, 0);
            if (fd >= 0)
                close(fd);
        }
    }

    /// <summary>
    /// A POST that must answer within <see cref="Quick"/>. Sent from the thread pool: the in-memory
    /// test server runs the handler on the sending thread up to its first await, so a blocking open
    /// would otherwise block the test itself, timeout and all.
    /// </summary>
    private async Task<HttpResponseMessage> PostQuicklyAsync(string url, object body) =>
        await Task.Run(() => Http.PostAsJsonAsync(url, body)).WaitAsync(Quick);

    [Fact]
    public async Task A_hard_link_to_a_file_outside_the_root_is_refused_unless_allowed()
    {
        var outside = Path.Combine(Factory.DataDir, "outside.img");
        var content = ApiClient.Pattern(4096, 7);
        await File.WriteAllBytesAsync(outside, content);
        Directory.CreateDirectory(Factory.ImageRoot);
        Assert.Equal(0, link(outside, Path.Combine(Factory.ImageRoot, "inside.img")));

        await Http.PostProblemAsync("/api/v1/nodes", new { name = "in", driver = "raw", path = "inside.img" }, 409, "image-hard-linked");
        await Http.PostProblemAsync("/api/v1/nodes", new { name = "in", driver = "raw", path = "inside.img", readOnly = true }, 409, "image-hard-linked");
        await Http.GetJsonAsync("/api/v1/nodes/in", HttpStatusCode.NotFound);
        Assert.Equal(content, await File.ReadAllBytesAsync(outside));

        // Storage:AllowHardLinks: the operator says such links are intended.
        await using var allowing = new BlockMirrorFactory(settings: new Dictionary<string, string?> { ["Storage:AllowHardLinks"] = "true" });
        Directory.CreateDirectory(allowing.ImageRoot);
        Assert.Equal(0, link(outside, Path.Combine(allowing.ImageRoot, "inside.img")));
        var http = allowing.CreateClient();
        var node = await http.PostJsonAsync("/api/v1/nodes", new { name = "in", driver = "raw", path = "inside.img" }, HttpStatusCode.Created);
        Assert.Equal(4096, (long)node["size"]!);
        await http.WriteAsync("in", 0, new byte[512]);
        Assert.Equal(new byte[512], (await File.ReadAllBytesAsync(outside))[..512]);
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mkfifo(string path, uint mode);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int link(string existing, string newPath);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags, uint mode);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
