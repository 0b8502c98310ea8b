using System.Collections.Concurrent;
using System.Diagnostics;

namespace BlockMirror.Interop.Tests.Nbd;

/// <summary>
/// Starts tool processes from one thread that lives as long as the test process.
/// </summary>
/// <remarks>
/// nbdkit calls <c>prctl(PR_SET_PDEATHSIG, SIGTERM)</c> at start, and the kernel sends that signal
/// when the <em>thread</em> that forked the process exits, not the process. xunit runs tests on
/// worker threads that come and go, so an nbdkit started from one was sometimes stopped by SIGTERM
/// within a second of its start (exit 143, or 0 once its handler was installed): the flaky
/// "nbdkit exited" and "connection refused" failures, traced with the kernel's signal_generate event.
/// </remarks>
internal static class ToolLauncher
{
    private static readonly BlockingCollection<(ProcessStartInfo Info, TaskCompletionSource<Process> Started)> Queue = [];

    static ToolLauncher()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = "tool-launcher" };
        thread.Start();
    }

    public static Task<Process> StartAsync(ProcessStartInfo info)
    {
        var started = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        Queue.Add((info, started));
        return started.Task;
    }

    private static void Run()
    {
        foreach (var (info, started) in Queue.GetConsumingEnumerable())
        {
            try
            {
                started.SetResult(Process.Start(info) ?? throw new InvalidOperationException($"Could not start {info.FileName}"));
            }
            catch (Exception e)
            {
                started.SetException(e);
            }
        }
    }
}
