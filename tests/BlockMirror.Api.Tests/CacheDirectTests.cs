using System.Net;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// <c>cache: {direct: true}</c> on POST /nodes: shown in the node view, kept in the node record so a
/// restart reopens the image with O_DIRECT (checked on the descriptor the service holds, in
/// /proc/self/fdinfo: the test host is the service's process), unaligned data through it, and the
/// refusals: a file system without O_DIRECT, and the drivers that cannot take it.
/// </summary>
public sealed class CacheDirectTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-direct-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task A_direct_node_shows_it_keeps_unaligned_data_and_reopens_direct_after_a_restart()
    {
        var data = ApiClient.Pattern(5000, 3);
        string image;
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            var created = await http.PostJsonAsync("/api/v1/nodes",
                new { name = "d", driver = "raw", path = "d.img", create = new { size = 1 << 20 }, cache = new { direct = true } }, HttpStatusCode.Created);
            Assert.True((bool)created["cache"]!["direct"]!);
            var plain = await http.CreateNodeAsync("p", 1 << 20);
            Assert.False((bool)plain["cache"]!["direct"]!);

            await http.WriteAsync("d", 1234, data);
            Assert.Equal(data, await http.ReadAsync("d", 1234, data.Length));
            image = Path.Combine(first.ImageRoot, "d.img");
            Assert.True(OpenedWithDirect(image), "the node's descriptor lacks O_DIRECT");
            Assert.False(OpenedWithDirect(Path.Combine(first.ImageRoot, "p.img")), "a default node's descriptor has O_DIRECT");
        }

        await using (var second = new BlockMirrorFactory(_dir))
        {
            var http = second.CreateClient();
            Assert.True((bool)(await http.GetJsonAsync("/api/v1/nodes/d"))["cache"]!["direct"]!);
            Assert.False((bool)(await http.GetJsonAsync("/api/v1/nodes/p"))["cache"]!["direct"]!);
            Assert.True(OpenedWithDirect(image), "the node was reopened without O_DIRECT");
            Assert.Equal(data, await http.ReadAsync("d", 1234, data.Length));
            await http.WriteAsync("d", 1, [9, 9, 9]);
            Assert.Equal([0, 9, 9, 9, 0], await http.ReadAsync("d", 0, 5));
        }
    }

    [TmpfsFact]
    public async Task A_file_system_without_O_DIRECT_is_refused_with_a_stable_code_and_leaves_no_file()
    {
        await using var factory = new BlockMirrorFactory(_dir);
        var http = factory.CreateClient();
        await using var ramfs = await TmpfsMount.MountAsync(Path.Combine(factory.ImageRoot, "ram"), "4m", type: "ramfs");
        await File.WriteAllBytesAsync(Path.Combine(ramfs.Path, "old.img"), new byte[65536]);

        var problem = await http.PostProblemAsync("/api/v1/nodes",
            new { name = "n", driver = "raw", path = "ram/new.img", create = new { size = 65536 }, cache = new { direct = true } }, 400, "direct-io-unsupported");
        Assert.Contains("ram/new.img", (string)problem["detail"]!);
        Assert.False(File.Exists(Path.Combine(ramfs.Path, "new.img")), "a refused create left its file behind");
        await http.PostProblemAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = "ram/old.img", cache = new { direct = true } }, 400, "direct-io-unsupported");
        await http.GetJsonAsync("/api/v1/nodes/n", HttpStatusCode.NotFound);
        // Buffered, the same file opens.
        var node = await http.PostJsonAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = "ram/old.img" }, HttpStatusCode.Created);
        Assert.False((bool)node["cache"]!["direct"]!);
    }

    [Fact]
    public async Task Direct_is_refused_for_qcow2_and_nbd_nodes_and_false_is_taken_by_every_driver()
    {
        await using var factory = new BlockMirrorFactory(_dir);
        var http = factory.CreateClient();
        var qcow2 = await http.PostProblemAsync("/api/v1/nodes",
            new { name = "q", driver = "qcow2", path = "q.qcow2", create = new { size = 65536 }, cache = new { direct = true } }, 400, "invalid-request");
        Assert.Contains("cache.direct", qcow2.ToJsonString());
        await http.PostProblemAsync("/api/v1/nodes",
            new { name = "r", driver = "nbd", uri = "nbd://127.0.0.1:1/x", cache = new { direct = true } }, 400, "invalid-request");
        var node = await http.PostJsonAsync("/api/v1/nodes",
            new { name = "q", driver = "qcow2", path = "q.qcow2", create = new { size = 65536 }, cache = new { direct = false } }, HttpStatusCode.Created);
        Assert.False((bool)node["cache"]!["direct"]!);
        await http.PostProblemAsync("/api/v1/nodes",
            new { name = "x", driver = "raw", path = "x.img", create = new { size = 65536 }, cache = new { direct = "yes" } }, 400, "invalid-request");
    }

    /// <summary>Whether this process holds <paramref name="path"/> open with O_DIRECT (fdinfo's flags are octal).</summary>
    private static bool OpenedWithDirect(string path)
    {
        var direct = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.Arm64 ? 0x10000 : 0x4000;
        var found = false;
        foreach (var link in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(link).LinkTarget;
            }
            catch (IOException)
            {
                continue; // closed meanwhile
            }
            if (target != path)
                continue;
            var flags = File.ReadLines($"/proc/self/fdinfo/{Path.GetFileName(link)}").First(l => l.StartsWith("flags:", StringComparison.Ordinal));
            if ((Convert.ToInt32(flags["flags:".Length..].Trim(), 8) & direct) == 0)
                return false;
            found = true;
        }
        Assert.True(found, $"{path} is not open");
        return true;
    }
}
