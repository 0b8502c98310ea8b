using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Interop.Tests.Nbd;
using Xunit.Abstractions;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// kill -9 of a process writing a qcow2 image through the driver, at seeded random points (during
/// allocating writes, copy-on-write, zeroing, discards, flushes and the repair at open), over a dozen
/// lives on the same image. After each kill: <c>qemu-img check</c> finds no corruption (leaks are
/// allowed), and every block reads back as the last acknowledged (flushed) operation on it left it,
/// or as one of the operations that were not acknowledged yet — read through qemu-img, not the driver.
/// </summary>
public sealed class Qcow2KillTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("bm-qcow2-kill-").FullName;

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    [QemuToolsTheory]
    [InlineData("cluster_size=65536", 64, 12)]
    [InlineData("cluster_size=4096,compat=0.10", 16, 10)]
    [InlineData("cluster_size=512", 12, 10)]
    [InlineData("cluster_size=65536,lazy_refcounts=on", 32, 10)]
    public async Task KilledWriter_LeavesNoCorruption_AndEveryAcknowledgedWrite(string options, int sizeMiB, int lives)
    {
        var image = Path.Combine(_dir, "kill.qcow2");
        await QemuImg.RunAsync("create", "-q", "-f", "qcow2", "-o", options, image, sizeMiB + "M");
        var clusterSize = (await QemuImg.InfoAsync(image)).GetProperty("cluster-size").GetInt32();
        var lazy = options.Contains("lazy", StringComparison.Ordinal);
        var blockSize = Math.Min(4096, clusterSize);
        var blocks = (int)((long)sizeMiB * (1 << 20) / blockSize);
        var ledger = new KillLedger(blocks, blockSize);
        var rng = new Random(options.Length * 31 + sizeMiB);
        var killedInFlight = 0;
        var previousMap = await QemuImg.MapAsync(image);

        for (var life = 0; life < lives; life++)
        {
            var lines = await RunAndKillAsync(image, seed: rng.Next(), firstId: (life + 1) * 1_000_000L, blockSize, clusterSize,
                waitForReady: life % 4 != 3, delayMs: rng.Next(30, 600));
            var ops = new List<KilledOperation>();
            var flushed = 0L;
            foreach (var line in lines)
            {
                var f = line.Split(' ');
                if (f[0] == "OP" && f.Length == 5)
                    ops.Add(new KilledOperation(long.Parse(f[1], CultureInfo.InvariantCulture), f[2][0], int.Parse(f[3], CultureInfo.InvariantCulture), int.Parse(f[4], CultureInfo.InvariantCulture)));
                else if (f[0] == "FLUSHED" && f.Length == 2)
                    flushed = long.Parse(f[1], CultureInfo.InvariantCulture);
            }
            if (ops.Any(o => o.Id > flushed))
                killedInFlight++;

            if (lazy)
            {
                // A dirty lazy-refcount image is repaired at the next read-write open (QEMU's behaviour):
                // do that, then qemu-img must find it consistent.
                await (Qcow2Image.Open(image, readOnly: false)).DisposeAsync();
            }
            var check = await QemuImg.CheckAsync(image);
            Assert.True(check.ExitCode is 0 or 3, $"life {life}: qemu-img check after kill -9\n{check.Describe()}");

            var raw = Path.Combine(_dir, "read.raw");
            File.Delete(raw);
            await QemuImg.RunAsync("convert", "-f", "qcow2", "-O", "raw", image, raw);
            var content = await File.ReadAllBytesAsync(raw);
            var map = await QemuImg.MapAsync(image);
            if (ledger.Check(ops, flushed, content) is { } violation)
            {
                // What the next occurrence needs to be told apart: did the mapping move, or did the bytes where it points change?
                var at = (long)violation.Block * blockSize;
                Assert.Fail($"life {life}: {violation.Message}; mapped before the life {MappingAt(previousMap, at)}, after {MappingAt(map, at)}; " +
                    $"this life's operations: {string.Join(" ", ops.Select(o => $"{o.Id}{o.Kind}{o.First}+{o.Count}"))}");
            }
            previousMap = map;
            output.WriteLine($"life {life}: {ops.Count} operations, acknowledged up to {flushed}, qemu-img check exit {check.ExitCode}");
        }
        // The kills must have hit work in progress, not only idle moments.
        Assert.True(killedInFlight >= lives / 2, $"only {killedInFlight} of {lives} kills hit unacknowledged operations");
    }

    /// <summary>The <c>qemu-img map</c> extent holding guest <paramref name="offset"/>: its host offset where it has one.</summary>
    private static string MappingAt(System.Text.Json.JsonElement map, long offset)
    {
        foreach (var extent in map.EnumerateArray())
        {
            var start = extent.GetProperty("start").GetInt64();
            if (offset < start || offset >= start + extent.GetProperty("length").GetInt64())
                continue;
            return extent.TryGetProperty("offset", out var host)
                ? $"at host {host.GetInt64() + (offset - start):#x}"
                : $"to no host cluster (zero {extent.GetProperty("zero").GetBoolean()}, data {extent.GetProperty("data").GetBoolean()})";
        }
        return "nowhere";
    }

    private async Task<List<string>> RunAndKillAsync(string image, int seed, long firstId, int blockSize, int clusterSize, bool waitForReady, int delayMs)
    {
        var assembly = typeof(Qcow2CrashWriter).Assembly.Location;
        var info = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { assembly, Qcow2CrashWriter.Command, image, seed.ToString(CultureInfo.InvariantCulture), firstId.ToString(CultureInfo.InvariantCulture), blockSize.ToString(CultureInfo.InvariantCulture), clusterSize.ToString(CultureInfo.InvariantCulture) })
            info.ArgumentList.Add(a);
        var lines = new ConcurrentQueue<string>();
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var process = await ToolLauncher.StartAsync(info);
        var stdout = Task.Run(async () =>
        {
            while (await process.StandardOutput.ReadLineAsync() is { } line)
            {
                lines.Enqueue(line);
                if (line == "READY")
                    ready.TrySetResult();
            }
        });
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            if (waitForReady)
                await ready.Task.WaitAsync(TimeSpan.FromSeconds(60));
            // A bounded pause is the point here: the kill must land at an arbitrary moment of the work.
            await Task.Delay(delayMs);
            if (process.HasExited)
                Assert.Fail($"the writer exited by itself ({process.ExitCode}): {await stderr}");
        }
        finally
        {
            process.Kill(); // SIGKILL
            await process.WaitForExitAsync();
        }
        await stdout;
        return [.. lines];
    }
}
