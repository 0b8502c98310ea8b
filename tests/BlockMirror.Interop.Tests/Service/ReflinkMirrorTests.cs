using System.Net;
using System.Text.RegularExpressions;
using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Service;

/// <summary>
/// Issue 15 item 4 on a file system that shares blocks: the service's image root on XFS with reflink
/// (made in a sparse file, mounted through a loop device). A raw → raw mirror copies with
/// copy_file_range, which such a file system answers by sharing the source's blocks: the target
/// ends byte for byte equal, and every data block it holds is shared with the source (FIEMAP's
/// shared flag, through <c>filefrag</c>) — no data was read or written, for a full mirror and for
/// an incremental one from a bitmap alike.
/// </summary>
public sealed partial class ReflinkMirrorTests : IAsyncLifetime
{
    private const long Size = 64L << 20;
    private const int Piece = 1 << 20;
    private const int FsBlock = 4096;

    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-reflink-").FullName;
    private string _mount = null!;
    private bool _mounted;
    private ServiceFactory? _factory;
    private HttpClient _http = null!;

    public async Task InitializeAsync()
    {
        // XFS wants at least 300 MiB; the file stays sparse.
        var fs = Path.Combine(_dir, "xfs.img");
        await using (var f = new FileStream(fs, FileMode.CreateNew))
            f.SetLength(512L << 20);
        await InteropTools.RunOkAsync("mkfs.xfs", "-q", "-m", "reflink=1", fs);
        _mount = Directory.CreateDirectory(Path.Combine(_dir, "mnt")).FullName;
        await InteropTools.RunOkAsync("mount", "-t", "xfs", "-o", "loop", fs, _mount);
        _mounted = true;
        _factory = new ServiceFactory();
        _factory.Settings["Storage:Root"] = _mount;
        _http = _factory.CreateClient();
    }

    public async Task DisposeAsync()
    {
        // The service first (it holds images on the mount), then the mount, whatever the service did.
        try
        {
            await (_factory?.DisposeAsync() ?? ValueTask.CompletedTask);
        }
        finally
        {
            await UnmountAndDeleteAsync();
        }
    }

    /// <summary>Unmounts (the loop device goes with it: mount -o loop sets autoclear) and removes the folder.</summary>
    private async Task UnmountAndDeleteAsync()
    {
        if (_mounted)
            await InteropTools.RunAsync("umount", [_mount]);
        Directory.Delete(_dir, recursive: true);
    }

    private Task Post(string url, object body, HttpStatusCode expected = HttpStatusCode.Created) =>
        ServiceFactory.SendAsync(_http, HttpMethod.Post, url, body, expected);

    private async Task WritePiecesAsync(IEnumerable<int> pieces, int seed)
    {
        var random = new Random(seed);
        foreach (var p in pieces)
        {
            var data = new byte[Piece];
            random.NextBytes(data);
            using var content = new ByteArrayContent(data);
            using var r = await _http.PutAsync($"/api/v1/nodes/src/data?offset={(long)p * Piece}", content);
            Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        }
    }

    private async Task MirrorAsync(string id, string? bitmap)
    {
        await Post("/api/v1/jobs/mirror", new { id, sync = "full", device = "src", target = "tgt", bitmap, autoDismiss = false });
        await ServiceFactory.WaitForJobAsync(_http, id, j => (string?)j["status"] == "ready", TimeSpan.FromSeconds(60));
        // A soft cancel at READY leaves both nodes in place (QEMU's block-job-cancel after READY).
        await Post($"/api/v1/jobs/{id}/cancel", new { }, HttpStatusCode.OK);
        var done = await ServiceFactory.WaitForJobAsync(_http, id, j => (string?)j["status"] == "concluded", TimeSpan.FromSeconds(60));
        Assert.Null(done["error"]);
    }

    private static async Task AssertSameBytesAsync(string source, string target, string after)
    {
        var expected = await File.ReadAllBytesAsync(source);
        var actual = await File.ReadAllBytesAsync(target);
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"the target differs from the source after {after}");
    }

    /// <summary>Bytes of the file in extents FIEMAP reports shared, and in all extents.</summary>
    private static async Task<(long Shared, long Mapped)> SharedBytesAsync(string path)
    {
        var run = await InteropTools.RunOkAsync("filefrag", "-v", "-b" + FsBlock, path);
        long shared = 0;
        long mapped = 0;
        foreach (Match m in ExtentLine().Matches(run.Stdout))
        {
            var bytes = long.Parse(m.Groups["length"].Value, System.Globalization.CultureInfo.InvariantCulture) * FsBlock;
            mapped += bytes;
            if (m.Groups["flags"].Value.Contains("shared", StringComparison.Ordinal))
                shared += bytes;
        }
        Assert.True(mapped > 0, $"filefrag listed no extents of {path}:\n{run.Stdout}");
        return (shared, mapped);
    }

    // "   0:        0..     255:      24..       279:    256:             shared"
    [GeneratedRegex(@"^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(?<length>\d+):\s*(?:\d+:)?\s*(?<flags>[a-z_,]*)\s*$", RegexOptions.Multiline)]
    private static partial Regex ExtentLine();

    [LoopDeviceFact("mkfs.xfs", "filefrag")]
    public async Task A_mirror_on_a_reflink_file_system_shares_the_sources_blocks_full_and_incremental()
    {
        await Post("/api/v1/nodes", new { name = "src", driver = "raw", path = "src.img", create = new { size = Size } });
        await Post("/api/v1/nodes", new { name = "tgt", driver = "raw", path = "tgt.img", create = new { size = Size } });
        var first = new[] { 0, 3, 4, 5, 17, 30, 31, 40, 62, 63 };
        await WritePiecesAsync(first, 1);

        await MirrorAsync("full", bitmap: null);
        var src = Path.Combine(_mount, "src.img");
        var tgt = Path.Combine(_mount, "tgt.img");
        await AssertSameBytesAsync(src, tgt, "the full mirror");
        var (shared, mapped) = await SharedBytesAsync(tgt);
        // Holes stay holes, and every byte of data the target holds is the source's own block.
        Assert.Equal((long)first.Length * Piece, mapped);
        Assert.Equal(mapped, shared);

        // An incremental from a bitmap: only what was written since, and that shared too.
        await Post("/api/v1/nodes/src/bitmaps", new { name = "inc" });
        var second = new[] { 1, 3, 50 };
        await WritePiecesAsync(second, 2);
        await MirrorAsync("incremental", bitmap: "inc");
        await AssertSameBytesAsync(src, tgt, "the incremental mirror");
        (shared, mapped) = await SharedBytesAsync(tgt);
        Assert.Equal((long)first.Union(second).Count() * Piece, mapped);
        Assert.Equal(mapped, shared);
    }
}
