using BlockMirror.Core.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A pivot is reported only once it is stored (issue 10, item 4): a store that refuses it fails the
/// job with the reason, and the device stays on its image (the target stays a node), so a restart
/// finds what the service showed.
/// </summary>
public sealed class PivotStoreFailureTests : IAsyncLifetime
{
    private const long Size = 8L << 20;
    private readonly MirrorFixture _f = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        _f.Store.FailWrites = null;
        await _f.DisposeAsync();
    }

    [Fact]
    public async Task A_pivot_the_store_refuses_fails_the_job_and_keeps_the_device_on_its_image()
    {
        var src = await _f.CreateRawAsync("src", Size);
        var dst = await _f.CreateRawAsync("dst", Size);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("src", "p", 65536, persistent: true, disabled: false));
        var model = await MirrorFixture.FillWithHolesAsync(src, seed: 3);
        var oldImage = src.Image;
        var storedSrc = _f.Store.NodesSnapshot()["src"];
        await _f.StartAsync(new MirrorOptions { Device = "src", Target = "dst" });
        await _f.WaitReadyAsync("src");

        _f.Store.FailWrites = new IOException("disk I/O error");
        await _f.Layer.CompleteJobAsync("src");
        var end = await _f.WaitEndAsync("src");

        Assert.Equal("BLOCK_JOB_COMPLETED", end.Name);
        Assert.Contains("could not be stored", end.Str("error"));
        Assert.Contains("disk I/O error", end.Str("error"));
        // The device is where the store says it is; the target is still a node, free again.
        Assert.Same(oldImage, src.Image);
        Assert.Equal(storedSrc.Path, src.Path);
        Assert.Same(dst, _f.Layer.FindNode("dst"));
        Assert.Null(src.JobId);
        Assert.Null(dst.JobId);
        Assert.Null(dst.Filter);
        Assert.Equal(storedSrc, _f.Store.NodesSnapshot()["src"]);
        Assert.True(_f.Store.NodesSnapshot().ContainsKey("dst"));

        // Writes after the failed pivot reach the device's own file, and its bitmap records them.
        _f.Store.FailWrites = null;
        await MirrorFixture.WritePatternAsync(src, model, 0x5a, 4096, 4096);
        MirrorFixture.AssertSame(model, await File.ReadAllBytesAsync(_f.FullPath(storedSrc.Path!)));
        Assert.True(src.GetBitmap("p").IsDirty(4096));
    }
}
