using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

public sealed class Qcow2RangeLocksTests
{
    [Fact]
    public async Task SharedHoldersShare_AnExclusiveOneWaitsForOverlapsOnly()
    {
        var locks = new Qcow2RangeLocks();
        var a = await locks.AcquireAsync(0, 10, exclusive: false);
        var b = await locks.AcquireAsync(5, 15, exclusive: false);
        var elsewhere = locks.AcquireAsync(20, 30, exclusive: true);
        Assert.True(elsewhere.IsCompleted);
        var x = locks.AcquireAsync(8, 12, exclusive: true);
        Assert.False(x.IsCompleted);
        locks.Release(a);
        Assert.False(x.IsCompleted);
        locks.Release(b);
        var held = await x.AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        locks.Release(held);
        locks.Release(await elsewhere);
    }

    [Fact]
    public async Task ReadersArrivingAfterAWaitingWriter_QueueBehindIt()
    {
        var locks = new Qcow2RangeLocks();
        var reader = await locks.AcquireAsync(0, 4, exclusive: false);
        var writer = locks.AcquireAsync(0, 4, exclusive: true);
        var lateReader = locks.AcquireAsync(2, 3, exclusive: false);
        Assert.False(writer.IsCompleted);
        Assert.False(lateReader.IsCompleted); // else a stream of readers could starve the writer

        locks.Release(reader);
        var w = await writer.AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.False(lateReader.IsCompleted);
        locks.Release(w);
        locks.Release(await lateReader.AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
    }
}
