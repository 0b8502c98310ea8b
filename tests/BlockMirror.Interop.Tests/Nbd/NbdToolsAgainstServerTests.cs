using System.Text.Json;
using BlockMirror.Core.Images;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>Real QEMU and libnbd tools against our NBD server.</summary>
public sealed class NbdToolsAgainstServerTests
{
    private sealed record MapEntry(long Offset, long Length, uint Type);

    private static async Task<List<MapEntry>> MapAsync(string uri, string? context = null)
    {
        var args = new List<string> { context is null ? "--map" : $"--map={context}", "--json", uri };
        var result = await InteropTools.RunAsync("nbdinfo", args);
        Assert.True(result.ExitCode == 0, result.Describe());
        using var json = JsonDocument.Parse(result.Stdout);
        return [.. json.RootElement.EnumerateArray().Select(e => new MapEntry(
            e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetUInt32()))];
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [NbdInteropFact("qemu-io", "nbdinfo")]
    public async Task Qemu_io_writes_are_exactly_the_dirty_granules_nbdinfo_reports()
    {
        await using var env = await InteropNbdServer.StartAsync();
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x55 65536 4096", env.UriOf());
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x66 5242880 131073", env.UriOf());
        var verify = await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "read -P 0x55 65536 4096", env.UriOf());
        Assert.DoesNotContain("verification failed", verify.Stdout, StringComparison.OrdinalIgnoreCase);

        const long g = InteropNbdServer.Granularity;
        var expectedDirty = new List<(long, long)> { (g, g), (5242880, 3 * g) };
        Assert.Equal(expectedDirty, env.Disk.FindBitmap("b0")!.GetExtents(0, InteropNbdServer.DiskSize));

        var map = await MapAsync(env.UriOf(), "qemu:dirty-bitmap:b0");
        Assert.Equal(expectedDirty, map.Where(e => e.Type == 1).Select(e => (e.Offset, e.Length)));
        Assert.Equal(InteropNbdServer.DiskSize, map.Sum(e => e.Length));
        Assert.Equal(0, map[0].Offset);
        Assert.All(map.Zip(map.Skip(1)), p => Assert.Equal(p.First.Offset + p.First.Length, p.Second.Offset));
    }

    [NbdInteropFact("qemu-io", "nbdinfo")]
    public async Task Nbdinfo_map_of_base_allocation_matches_the_image_over_a_unix_socket()
    {
        await using var env = await InteropNbdServer.StartAsync(unix: true);
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x11 1048576 65536", "-c", "write -P 0x22 8388608 8192", env.UriOf());
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "write -z 1048576 4096", env.UriOf()); // zeroes inside data

        var expected = new List<MapEntry>();
        await foreach (var e in ImageExtents.EnumerateAsync(env.Disk.Image, 0, InteropNbdServer.DiskSize))
            expected.Add(new MapEntry(e.Offset, e.Length, e.Kind == ExtentKind.Zero ? 3u : 0u));
        var map = await MapAsync(env.UriOf());
        Assert.Equal(expected, map);
        Assert.Contains(new MapEntry(8388608, 8192, 0), map);
    }

    [NbdInteropFact("nbdinfo")]
    public async Task Nbdinfo_lists_the_export_with_its_contexts_and_flags()
    {
        await using var env = await InteropNbdServer.StartAsync();
        var result = await InteropTools.RunOkAsync("nbdinfo", "--list", "--json", env.UriOf());
        using var json = JsonDocument.Parse(result.Stdout);
        Assert.True(json.RootElement.GetProperty("structured").GetBoolean());
        var exports = json.RootElement.GetProperty("exports").EnumerateArray().ToList();
        Assert.Equal(["disk0", "disk0-ro"], exports.Select(e => e.GetProperty("export-name").GetString()!).Order(StringComparer.Ordinal));
        Assert.True(exports.Single(e => e.GetProperty("export-name").GetString() == "disk0-ro").GetProperty("is_read_only").GetBoolean());
        var export = exports.Single(e => e.GetProperty("export-name").GetString() == "disk0");
        Assert.Equal(InteropNbdServer.DiskSize, export.GetProperty("export-size").GetInt64());
        Assert.Equal(["base:allocation", "qemu:dirty-bitmap:b0"], export.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()!).Order(StringComparer.Ordinal));
        foreach (var flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df" })
            Assert.True(export.GetProperty(flag).GetBoolean(), flag);
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
    }

    [NbdInteropFact("qemu-img", "qemu-io")]
    public async Task Qemu_img_compare_finds_the_export_identical_to_its_file()
    {
        await using var env = await InteropNbdServer.StartAsync();
        await InteropTools.RunOkAsync("qemu-io", "-f", "raw", "-c", "write -P 0xAB 0 1048576", "-c", "write -P 0xCD 12582912 70000", env.UriOf());
        // -U: the service holds the file's write lock, as qemu would; compare only reads.
        var same = await InteropTools.RunAsync("qemu-img", ["compare", "-U", "-f", "raw", "-F", "raw", env.UriOf(), env.ImagePath]);
        Assert.True(same.ExitCode == 0, same.Describe());
        Assert.Contains("identical", same.Stdout, StringComparison.OrdinalIgnoreCase);

        var other = env.TempPath("other.img");
        await File.WriteAllBytesAsync(other, new byte[InteropNbdServer.DiskSize]);
        var differ = await InteropTools.RunAsync("qemu-img", ["compare", "-U", "-f", "raw", "-F", "raw", env.UriOf(), other]);
        Assert.True(differ.ExitCode == 1, differ.Describe());
    }

    [NbdInteropFact("nbdcopy")]
    public async Task Nbdcopy_in_and_out_round_trips_bytes_and_dirties_what_it_wrote()
    {
        await using var env = await InteropNbdServer.StartAsync();
        var source = env.TempPath("source.img");
        var content = new byte[InteropNbdServer.DiskSize];
        // Data in places, zeroes (and holes) elsewhere, so nbdcopy exercises both writes and zeroing.
        Pattern(3 * 1024 * 1024, 1).CopyTo(content, 0);
        Pattern(100_000, 2).CopyTo(content, 9 * 1024 * 1024 + 12345);
        await using (var f = new FileStream(source, FileMode.CreateNew))
        {
            await f.WriteAsync(content.AsMemory(0, 3 * 1024 * 1024));
            f.Position = 9 * 1024 * 1024 + 12345;
            await f.WriteAsync(content.AsMemory(9 * 1024 * 1024 + 12345, 100_000));
            f.SetLength(InteropNbdServer.DiskSize);
        }

        await InteropTools.RunOkAsync("nbdcopy", "--flush", source, env.UriOf());
        var onNode = new byte[InteropNbdServer.DiskSize];
        await env.Disk.ReadAsync(0, onNode);
        Assert.True(content.AsSpan().SequenceEqual(onNode), "the node does not hold what nbdcopy wrote");
        var dirty = env.Disk.FindBitmap("b0")!.GetExtents(0, InteropNbdServer.DiskSize);
        Assert.Contains(dirty, d => d.Offset == 0 && d.Length >= 3 * 1024 * 1024);
        Assert.Contains(dirty, d => d.Offset <= 9 * 1024 * 1024 + 12345 && d.Offset + d.Length >= 9 * 1024 * 1024 + 12345 + 100_000);

        var target = env.TempPath("target.img");
        await using (var f = new FileStream(target, FileMode.CreateNew))
            f.SetLength(InteropNbdServer.DiskSize);
        await InteropTools.RunOkAsync("nbdcopy", env.UriOf(), target);
        var copied = await File.ReadAllBytesAsync(target);
        Assert.True(content.AsSpan().SequenceEqual(copied), "the copy out differs from the source");
    }
}
