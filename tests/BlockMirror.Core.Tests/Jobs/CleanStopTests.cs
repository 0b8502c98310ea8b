using BlockMirror.Core.Images;
using BlockMirror.Core.Jobs;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.Tests.Images;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A clean stop checkpoints every node it can and lists the ones it cannot, instead of aborting
/// (issue 10, case 14): a node whose folder became a symlink leading out of the root, a job whose
/// target stopped answering. Before, the first failure ended the whole stop (the host then aborted)
/// and no node got its clean-stop checkpoint.
/// </summary>
public sealed class CleanStopTests : IDisposable
{
    private const long G = 65536;
    private readonly TempImageDirectory _dir = new();
    private readonly InMemoryBlockStore _store = new();
    private readonly TestImageOpener _opener = new();

    public void Dispose() => _dir.Dispose();

    private BlockLayer NewLayer() => new(new ImageRoot(_dir.PathOf("root")), _store, new RecordingEventSink(), TimeProvider.System, _opener)
    {
        JobStore = new InMemoryJobStore(),
        StopWait = TimeSpan.FromSeconds(1),
    };

    private static async Task AddDirtyPersistentBitmapAsync(BlockLayer layer, string node)
    {
        await layer.BitmapActionAsync(new BitmapAddAction(node, "p", G, persistent: true, disabled: false));
        await layer.GetNode(node).WriteAsync(3 * G, new byte[512]);
    }

    [Fact]
    public async Task A_node_whose_folder_became_a_symlink_out_of_the_root_is_stored_inconsistent_and_the_others_are_checkpointed()
    {
        Directory.CreateDirectory(_dir.PathOf("root/vm"));
        var layer = NewLayer();
        await layer.CreateNodeAsync(new NodeSpec("a", "raw", "vm/a.img", null, 16 * G, false));
        await layer.CreateNodeAsync(new NodeSpec("b", "raw", "b.img", null, 16 * G, false));
        await AddDirtyPersistentBitmapAsync(layer, "a");
        await AddDirtyPersistentBitmapAsync(layer, "b");
        // The folder moves out of the root and a symlink to it takes its place.
        Directory.Move(_dir.PathOf("root/vm"), _dir.PathOf("elsewhere"));
        Directory.CreateSymbolicLink(_dir.PathOf("root/vm"), _dir.PathOf("elsewhere"));

        await layer.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));

        var b = _store.FindBitmap("b", "p")!;
        Assert.False(b.InUse, "b got its clean-stop checkpoint");
        Assert.False(b.Inconsistent);
        // The stop's checkpoint sees that the path no longer leads to a's file inside the root: a's
        // bitmap is stored inconsistent, saying why, rather than claimed exact for a path nobody can open.
        var a = _store.FindBitmap("a", "p")!;
        Assert.True(a.Inconsistent);
        Assert.Contains("outside the image root", a.InconsistentReason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_job_whose_target_never_answers_is_left_behind_and_the_device_is_still_checkpointed()
    {
        var layer = NewLayer();
        await layer.CreateNodeAsync(new NodeSpec("src", "raw", "src.img", null, 16 * G, false));
        await AddDirtyPersistentBitmapAsync(layer, "src");
        var target = new StallingImage(RawFileImage.Create(_dir.PathOf("root/tgt.img"), 16 * G));
        _opener.Register("fault://tgt", target);
        await layer.CreateNodeAsync(new NodeSpec("tgt", "nbd", null, "fault://tgt", null, false));
        target.Stall();
        var job = await layer.StartMirrorAsync(new MirrorOptions { Id = "m", Device = "src", Target = "tgt" });
        await target.Stalled.WaitAsync(TimeSpan.FromSeconds(30));

        try
        {
            await layer.ShutdownJobsAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Contains(layer.StopFailures, f => f.StartsWith("job 'm'", StringComparison.Ordinal));
            await layer.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));

            var src = _store.FindBitmap("src", "p")!;
            Assert.False(src.InUse, $"src got its clean-stop checkpoint; failures: {string.Join("; ", layer.StopFailures)}");
            Assert.False(src.Inconsistent);
        }
        finally
        {
            target.Release();
            await job.Concluded.WaitAsync(TimeSpan.FromSeconds(30));
        }
    }
}
