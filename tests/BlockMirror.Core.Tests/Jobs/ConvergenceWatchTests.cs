using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Copy mode auto's decision (<see cref="ConvergenceWatch"/>) on a clock the test sets.</summary>
public sealed class ConvergenceWatchTests
{
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(5);

    private static TimeSpan At(double seconds) => TimeSpan.FromSeconds(seconds);

    [Fact]
    public void Remaining_that_did_not_shrink_over_a_whole_window_while_writes_went_on_is_a_stall()
    {
        var watch = new ConvergenceWatch(Window);
        Assert.Null(watch.Observe(At(0), 100, dirtied: 0));
        // Inside the window nothing is decided, however it looks.
        Assert.Null(watch.Observe(At(4.9), 500, dirtied: 300));

        var stall = watch.Observe(At(5), 120, dirtied: 400);

        Assert.NotNull(stall);
        Assert.Equal(At(5), stall.Value.Length);
        Assert.Equal(100, stall.Value.RemainingAtStart);
        Assert.Equal(120, stall.Value.Remaining);
        Assert.Equal(400, stall.Value.Dirtied);
    }

    [Fact]
    public void Remaining_that_shrank_over_the_window_is_no_stall_and_opens_the_next_window()
    {
        var watch = new ConvergenceWatch(Window);
        watch.Observe(At(0), 100, dirtied: 0);
        // Noisy in between (a chunk in flight, a burst of writes), lower at the end: converging.
        watch.Observe(At(2), 180, dirtied: 200);
        Assert.Null(watch.Observe(At(5), 99, dirtied: 300));
        // The next window starts at 99: not shrinking below it for 5 s more is a stall.
        Assert.Null(watch.Observe(At(9.9), 99, dirtied: 350));
        var stall = watch.Observe(At(10), 99, dirtied: 400);
        Assert.NotNull(stall);
        Assert.Equal(99, stall.Value.RemainingAtStart);
        Assert.Equal(100, stall.Value.Dirtied);
    }

    [Fact]
    public void Shrinking_by_no_more_than_the_minimum_is_no_progress()
    {
        var watch = new ConvergenceWatch(Window, minShrink: 10);
        watch.Observe(At(0), 100, dirtied: 0);
        var stall = watch.Observe(At(5), 90, dirtied: 50);
        Assert.NotNull(stall);
        Assert.Equal(90, stall.Value.Remaining);
        // The next window starts at 90; 11 less is progress.
        Assert.Null(watch.Observe(At(10), 79, dirtied: 100));
    }

    [Fact]
    public void A_window_without_writes_is_no_stall_however_slow_the_copy()
    {
        var watch = new ConvergenceWatch(Window);
        watch.Observe(At(0), 100, dirtied: 7);
        // speed: 1 copies a chunk a week; write-blocking would not make that faster.
        Assert.Null(watch.Observe(At(60), 100, dirtied: 7));
    }

    [Fact]
    public void Being_in_sync_at_any_look_restarts_the_window()
    {
        var watch = new ConvergenceWatch(Window);
        watch.Observe(At(0), 100, dirtied: 0);
        Assert.Null(watch.Observe(At(3), 0, dirtied: 50));
        // 5 s after the start but only 2 s after the job was in sync.
        Assert.Null(watch.Observe(At(5), 100, dirtied: 100));
        Assert.NotNull(watch.Observe(At(8), 100, dirtied: 150));
    }

    [Fact]
    public void A_restart_drops_the_time_before_it()
    {
        var watch = new ConvergenceWatch(Window);
        watch.Observe(At(0), 100, dirtied: 0);
        watch.Restart();
        // Paused from 1 s to 30 s: the first look after the pause opens a new window.
        Assert.Null(watch.Observe(At(30), 100, dirtied: 500));
        Assert.Null(watch.Observe(At(34.9), 100, dirtied: 600));
        Assert.NotNull(watch.Observe(At(35), 100, dirtied: 700));
    }
}
