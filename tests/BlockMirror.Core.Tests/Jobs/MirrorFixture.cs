using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Images;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A block layer over real raw files in a temp directory, an in-memory store, a recording event
/// sink and a job store; plus helpers to fill, write and compare images.
/// </summary>
public sealed class MirrorFixture : IAsyncDisposable
{
    private readonly TempImageDirectory _dir = new();

    public MirrorFixture()
    {
        Directory.CreateDirectory(_dir.PathOf("root"));
        Root = new ImageRoot(_dir.PathOf("root"));
        Layer = new BlockLayer(Root, Store, Events, TimeProvider.System, Opener) { JobStore = JobStore };
    }

    public ImageRoot Root { get; }

    public InMemoryBlockStore Store { get; } = new();

    public InMemoryJobStore JobStore { get; } = new();

    public RecordingEventSink Events { get; } = new();

    public TestImageOpener Opener { get; } = new();

    public BlockLayer Layer { get; }

    public string FullPath(string relative) => Root.Resolve(relative);

    public Task<BlockNode> CreateRawAsync(string name, long size) =>
        Layer.CreateNodeAsync(new NodeSpec(name, "raw", name + ".img", null, size, false));

    /// <summary>A node on a raw file wrapped in a <see cref="FaultInjectingImage"/> (driver nbd, uri fault://name).</summary>
    public async Task<(BlockNode Node, FaultInjectingImage Image)> CreateFaultyAsync(string name, long size)
    {
        var raw = RawFileImage.Create(FullPath(name + ".img"), size);
        var image = new FaultInjectingImage(raw);
        Opener.Register("fault://" + name, image);
        var node = await Layer.CreateNodeAsync(new NodeSpec(name, "nbd", null, "fault://" + name, null, false));
        return (node, image);
    }

    /// <summary>Random data in some granules, holes and explicit zero runs in others; returns the expected content.</summary>
    public static async Task<byte[]> FillWithHolesAsync(BlockNode node, int seed, int granularity = 65536)
    {
        var size = (int)node.Size;
        var model = new byte[size];
        var random = new Random(seed);
        for (var off = 0; off < size; off += granularity)
        {
            var pick = random.Next(4);
            if (pick == 0)
                continue; // hole
            var len = Math.Min(granularity, size - off);
            if (pick == 1)
            {
                // allocated zeroes: must end up reading as zero, never as data
                await node.WriteAsync(off, new byte[len]);
                continue;
            }
            random.NextBytes(model.AsSpan(off, len));
            await node.WriteAsync(off, model.AsMemory(off, len));
        }
        return model;
    }

    public static async Task<byte[]> ReadAllAsync(IBlockImage image)
    {
        var data = new byte[image.Size];
        await image.ReadAsync(0, data);
        return data;
    }

    public static async Task WritePatternAsync(BlockNode node, byte[] model, byte pattern, long offset, int length)
    {
        var data = new byte[length];
        Array.Fill(data, pattern);
        await node.WriteAsync(offset, data);
        data.CopyTo(model, offset);
    }

    public static void AssertSame(byte[] expected, byte[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        var diff = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(diff == expected.Length, $"first difference at byte {diff}");
    }

    public Task<MirrorJob> StartAsync(MirrorOptions options) => Layer.StartMirrorAsync(options);

    public async Task WaitReadyAsync(string id) => await Events.WaitForAsync("BLOCK_JOB_READY", id);

    /// <summary>Waits for the job's final event (COMPLETED or CANCELLED) and its conclusion, and returns the event.</summary>
    public async Task<RecordedEvent> WaitEndAsync(string id)
    {
        var end = await Events.WaitAsync(e => e.Str("id") == id && e.Name is "BLOCK_JOB_COMPLETED" or "BLOCK_JOB_CANCELLED");
        await Events.WaitForStatusAsync(id, "concluded");
        return end;
    }

    /// <summary>The statuses of an auto-dismissed job once it is gone (waits for "null").</summary>
    public async Task<IReadOnlyList<string>> StatusesAfterDismissAsync(string id)
    {
        await Events.WaitForStatusAsync(id, "null");
        return Events.StatusesOf(id);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var job in Layer.Jobs)
        {
            if (job.Status is not (JobStatus.Concluded or JobStatus.Null))
            {
                try
                {
                    await Layer.CancelJobAsync(job.Id, force: true);
                }
                catch (BlockException)
                {
                }
            }
        }
        foreach (var job in Layer.Jobs)
            await job.Concluded.WaitAsync(RecordingEventSink.Timeout);
        await Layer.DisposeAsync();
        _dir.Dispose();
    }
}
