using System.Net;
using BlockMirror.Api.Data;
using BlockMirror.Api.Tests.Infrastructure;
using BlockMirror.Core.State;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace BlockMirror.Api.Tests;

public sealed class JobRestartTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockmirror-jobrestart-").FullName;

    public void Dispose() => BlockMirrorFactory.DeleteDir(_dir);

    [Fact]
    public async Task A_job_running_at_stop_is_concluded_with_an_error_and_its_bitmap_keeps_the_work()
    {
        await using (var first = new BlockMirrorFactory(_dir))
        {
            var http = first.CreateClient();
            await using var events = await EventWaiter.StartAsync(first.CreateClient());
            await http.CreateNodeAsync("disk0", 64L << 20);
            await http.CreateNodeAsync("copy", 64L << 20);
            await http.AddBitmapAsync("disk0", "b0", persistent: true);
            // More data than the job can have in flight (16 × 1 MiB) before the limiter holds it.
            for (var i = 0; i < 8; i++)
                await http.WriteAsync("disk0", i * (4L << 20), ApiClient.Pattern(4 << 20, (byte)i));
            // speed=1: one chunk is copied, then the job waits; the stop cuts it off.
            await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "copy", bitmap = "b0", speed = 1, autoDismiss = false }, HttpStatusCode.Created);
            await events.WaitStatusAsync("j", "running");
        }

        await using var second = new BlockMirrorFactory(_dir);
        var h = second.CreateClient();
        var job = await h.GetJsonAsync("/api/v1/jobs/j");
        Assert.Equal("concluded", (string?)job["status"]);
        Assert.Contains("service stopped", (string?)job["error"], StringComparison.Ordinal);
        Assert.False((bool)(await h.GetJsonAsync("/api/v1/nodes/disk0"))["busy"]!);
        Assert.False((bool)(await h.GetJsonAsync("/api/v1/nodes/copy"))["busy"]!);
        // The working bitmap survived the restart with the work not done, and records again.
        var b0 = await h.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
        Assert.False((bool)b0["inconsistent"]!);
        Assert.False((bool)b0["busy"]!);
        Assert.True((bool)b0["recording"]!);
        Assert.InRange((long)b0["count"]!, 1, 32L << 20);
        await h.PostJsonAsync("/api/v1/jobs/j/dismiss", new { });
    }

    [Fact]
    public async Task A_completed_mirror_is_stored_whole_before_any_stop()
    {
        await using var service = new BlockMirrorFactory(_dir);
        var http = service.CreateClient();
        await using var events = await EventWaiter.StartAsync(service.CreateClient());
        await http.CreateNodeAsync("disk0", 8L << 20);
        await http.CreateNodeAsync("copy", 8L << 20);
        await http.AddBitmapAsync("disk0", "p", persistent: true);
        await http.AddBitmapAsync("copy", "t", persistent: true);
        await http.WriteAsync("disk0", 1 << 20, ApiClient.Pattern(65536, 7));
        await http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "copy", autoDismiss = false }, HttpStatusCode.Created);
        await events.WaitStatusAsync("j", "ready");
        await http.PostJsonAsync("/api/v1/jobs/j/complete", new { });
        await events.WaitStatusAsync("j", "concluded");

        // What a kill -9 now would find: the device on copy.img, its checkpoint stamped with
        // copy.img's inode (else the restart calls the bitmap inconsistent), the target gone.
        var factory = service.Services.GetRequiredService<IDbContextFactory<BlockMirrorDbContext>>();
        await using var db = await factory.CreateDbContextAsync();
        var device = await db.Nodes.AsNoTracking().SingleAsync(n => n.Name == "disk0");
        Assert.Equal("copy.img", device.Path);
        Assert.False(await db.Nodes.AnyAsync(n => n.Name == "copy"));
        Assert.False(await db.Bitmaps.AnyAsync(b => b.Node == "copy"));
        var p = await db.Bitmaps.AsNoTracking().SingleAsync(b => b.Node == "disk0" && b.Name == "p");
        Assert.Equal(ImageStamp.Read(Path.Combine(service.ImageRoot, "copy.img"))!.Value.Inode, p.ImageInode);
    }
}
