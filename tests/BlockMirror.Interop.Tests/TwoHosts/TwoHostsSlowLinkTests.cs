using System.Net;
using Xunit.Abstractions;
using static BlockMirror.Interop.Tests.TwoHosts.HostApi;
using static BlockMirror.Interop.Tests.TwoHosts.TwoHostsOverSlowLink;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// Issue 16 item 2, second half: the two hosts of <see cref="TwoHostsTlsTests"/> over a slow link
/// (<see cref="SlowLink"/>), and B's service killed with kill -9 while A mirrors into it through a
/// working bitmap and a writer writes on A. With onTargetError report the job fails with an error
/// that names the target, the working bitmap keeps every byte the target lacks, and once B is back
/// a second mirror from that bitmap copies only what it holds; with stop the job pauses and, once B
/// is back, resumes where it stopped; with ignore it keeps retrying and goes on by itself once B is
/// back. Each way A's node reconnects by itself and the target ends
/// equal to the source.
/// </summary>
[Collection(TwoHostsCollection.Name)]
public sealed class TwoHostsSlowLinkTests(ITestOutputHelper output)
{
    [NetnsFact]
    public async Task When_b_is_killed_mid_mirror_over_a_slow_link_the_working_bitmap_keeps_what_b_lacks_and_a_second_mirror_copies_only_that()
    {
        await using var hosts = await TwoHostsOverSlowLink.StartAsync(output);
        var (a, uri) = (hosts.A, hosts.Uri);
        var writer = new HotWriter(a);
        await StartMoveAsync(a, "report");
        var middle = await WaitForJobAsync(a, "move", j => (long)j["bytesCopied"]! >= DataLength / 2 || (string?)j["status"] == "concluded");
        Assert.Equal("running", (string?)middle["status"]);
        await hosts.B.KillAsync();

        // onTargetError report: the job fails, and its error says which target went away.
        var failed = await WaitForJobAsync(a, "move", j => (string?)j["status"] == "concluded");
        output.WriteLine($"failed job: {failed.ToJsonString()}");
        Assert.Equal("failed", (string?)failed["outcome"]);
        Assert.Contains(uri, (string?)failed["error"]);
        await writer.StopAsync();

        // Every byte where B's target (as the kill left it) differs from the source lies in a
        // granule b0 holds dirty; b0 records again, so the writer's last writes are in it too.
        var bitmap = await SendAsync(a.Http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/b0", null, HttpStatusCode.OK);
        Assert.True((bool)bitmap["recording"]!);
        var dirty = (await SendAsync(a.Http, HttpMethod.Get, "/api/v1/nodes/src/bitmaps/b0/extents", null, HttpStatusCode.OK))["items"]!.AsArray()
            .Select(e => ((long)e!["offset"]!, (long)e["length"]!)).ToList();
        var dirtyBytes = (long)bitmap["count"]!;
        Assert.Equal(dirtyBytes, dirty.Sum(e => e.Item2));
        var source = await File.ReadAllBytesAsync(Path.Combine(a.ImageRoot, "src.img"));
        var stale = await File.ReadAllBytesAsync(Path.Combine(hosts.B.ImageRoot, "dst.img"));
        var differing = FirstByteOutside(source, stale, dirty);
        Assert.True(differing < 0, $"byte {differing} differs on B but b0 holds it clean");
        Assert.True(dirtyBytes > 0, "the kill left nothing to copy: it came too late to test anything");
        Assert.True(dirtyBytes < Size / 4, $"b0 holds {dirtyBytes} of {Size} bytes: the first mirror got nothing through");
        output.WriteLine($"b0 after the kill: {dirtyBytes} dirty bytes in {dirty.Count} extents; first job copied {failed["bytesCopied"]}");

        // B comes back on its database and root; A's node reconnects at its next request (the
        // connection the kill broke is replaced, as QEMU's nbd driver does), so the same node serves.
        await hosts.RestartBAsync();
        await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/mirror",
            new { id = "resume", sync = "full", device = "src", target = "remote", bitmap = "b0", bitmapMode = "always", onTargetError = "report" },
            HttpStatusCode.Created);
        var ready = await WaitForJobAsync(a, "resume", j => (string?)j["status"] is "ready" or "concluded");
        Assert.True((string?)ready["status"] == "ready", ready.ToJsonString());
        await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/resume/complete", new { }, HttpStatusCode.OK);
        var done = await WaitForJobAsync(a, "resume", j => (string?)j["status"] == "concluded");
        Assert.Null(done["error"]);
        var copied = (long)done["bytesCopied"]!;
        output.WriteLine($"second job copied {copied} bytes");
        Assert.True(copied <= dirtyBytes, $"the second mirror copied {copied} bytes, more than the {dirtyBytes} b0 held");

        await hosts.AssertTargetEqualsAsync(source);
    }

    [NetnsFact]
    public async Task When_b_is_killed_mid_mirror_with_on_target_error_stop_the_job_pauses_and_resumes_once_b_is_back()
    {
        await using var hosts = await TwoHostsOverSlowLink.StartAsync(output);
        var a = hosts.A;
        var writer = new HotWriter(a);
        await StartMoveAsync(a, "stop");
        var middle = await WaitForJobAsync(a, "move", j => (long)j["bytesCopied"]! >= DataLength / 2 || (string?)j["status"] == "concluded");
        Assert.Equal("running", (string?)middle["status"]);
        await hosts.B.KillAsync();

        // onTargetError stop: a user pause with the io-status set, nothing skipped, no error.
        var paused = await WaitForJobAsync(a, "move", j => (string?)j["status"] is "paused" or "concluded");
        Assert.True((string?)paused["status"] == "paused" && (string?)paused["ioStatus"] == "failed", paused.ToJsonString());
        Assert.Null(paused["error"]);
        await writer.StopAsync();

        await hosts.RestartBAsync();
        var resumed = await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/move/resume", new { }, HttpStatusCode.OK);
        Assert.Equal("ok", (string?)resumed["ioStatus"]);
        var ready = await WaitForJobAsync(a, "move", j => (string?)j["status"] is "ready" or "concluded");
        Assert.True((string?)ready["status"] == "ready", ready.ToJsonString());
        await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/move/complete", new { }, HttpStatusCode.OK);
        var done = await WaitForJobAsync(a, "move", j => (string?)j["status"] == "concluded");
        Assert.Null(done["error"]);

        await hosts.AssertTargetEqualsAsync(await File.ReadAllBytesAsync(Path.Combine(a.ImageRoot, "src.img")));
    }

    [NetnsFact]
    public async Task When_b_is_killed_mid_mirror_with_on_target_error_ignore_the_job_retries_and_goes_on_once_b_is_back()
    {
        await using var hosts = await TwoHostsOverSlowLink.StartAsync(output);
        var a = hosts.A;
        var writer = new HotWriter(a);
        await StartMoveAsync(a, "ignore");
        var middle = await WaitForJobAsync(a, "move", j => (long)j["bytesCopied"]! >= DataLength / 2 || (string?)j["status"] == "concluded");
        Assert.Equal("running", (string?)middle["status"]);
        var copiedAtKill = (long)middle["bytesCopied"]!;
        await hosts.B.KillAsync();
        await writer.StopAsync();

        // ignore: the failed ranges stay dirty and are tried again; the job neither fails nor pauses.
        await hosts.RestartBAsync();
        var ready = await WaitForJobAsync(a, "move", j => (string?)j["status"] is "ready" or "concluded" or "paused");
        Assert.True((string?)ready["status"] == "ready", ready.ToJsonString());
        Assert.True((long)ready["bytesCopied"]! > copiedAtKill);
        await SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/move/complete", new { }, HttpStatusCode.OK);
        var done = await WaitForJobAsync(a, "move", j => (string?)j["status"] == "concluded");
        Assert.Null(done["error"]);

        await hosts.AssertTargetEqualsAsync(await File.ReadAllBytesAsync(Path.Combine(a.ImageRoot, "src.img")));
    }

    private static Task StartMoveAsync(NamespacedService a, string onTargetError) =>
        SendAsync(a.Http, HttpMethod.Post, "/api/v1/jobs/mirror",
            new { id = "move", sync = "full", device = "src", target = "remote", bitmap = "b0", bitmapMode = "always", onTargetError },
            HttpStatusCode.Created);

    /// <summary>The first offset where the two images differ outside every dirty extent, or -1.</summary>
    private static long FirstByteOutside(byte[] source, byte[] target, List<(long Offset, long Length)> dirty)
    {
        long position = 0;
        foreach (var (offset, length) in dirty.Append((source.LongLength, 0L)))
        {
            var clean = (int)(offset - position);
            var at = source.AsSpan((int)position, clean).CommonPrefixLength(target.AsSpan((int)position, clean));
            if (at < clean)
                return position + at;
            position = offset + length;
        }
        return -1;
    }
}
