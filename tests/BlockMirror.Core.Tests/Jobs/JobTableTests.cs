using BlockMirror.Core.Jobs;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>QEMU's JobSTT and JobVerbTable, cell by cell (qemu-semantics c.2, c.3).</summary>
public sealed class JobTableTests
{
    // Columns: U C R P Y S W D X E N
    private static readonly JobStatus[] Order =
    [
        JobStatus.Undefined, JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby,
        JobStatus.Waiting, JobStatus.Pending, JobStatus.Aborting, JobStatus.Concluded, JobStatus.Null,
    ];

    private static readonly Dictionary<JobStatus, string> Transitions = new()
    {
        [JobStatus.Undefined] = ".x.........",
        [JobStatus.Created] = "..x.....x.x",
        [JobStatus.Running] = "...xx.x.x..",
        [JobStatus.Paused] = "..x........",
        [JobStatus.Ready] = ".....xx.x..",
        [JobStatus.Standby] = "....x......",
        [JobStatus.Waiting] = ".......xx..",
        [JobStatus.Pending] = "........xx.",
        [JobStatus.Aborting] = "........xx.",
        [JobStatus.Concluded] = "..........x",
        [JobStatus.Null] = "...........",
    };

    private static readonly Dictionary<JobVerb, string> Verbs = new()
    {
        [JobVerb.Cancel] = ".xxxxxxx...",
        [JobVerb.Pause] = ".xxxxx.....",
        [JobVerb.Resume] = ".xxxxx.....",
        [JobVerb.SetSpeed] = ".xxxxx.....",
        [JobVerb.Complete] = "....xx.....",
        [JobVerb.Finalize] = ".......x...",
        [JobVerb.Dismiss] = ".........x.",
        [JobVerb.Change] = ".xxxxx.....",
    };

    public static TheoryData<JobStatus, JobStatus> AllPairs()
    {
        var data = new TheoryData<JobStatus, JobStatus>();
        foreach (var from in Order)
        {
            foreach (var to in Order)
                data.Add(from, to);
        }
        return data;
    }

    public static TheoryData<JobVerb, JobStatus> AllVerbCells()
    {
        var data = new TheoryData<JobVerb, JobStatus>();
        foreach (var verb in Enum.GetValues<JobVerb>())
        {
            foreach (var status in Order)
                data.Add(verb, status);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(AllPairs))]
    public void Transition_table_matches_qemu(JobStatus from, JobStatus to)
    {
        var expected = Transitions[from][Array.IndexOf(Order, to)] == 'x';
        Assert.Equal(expected, Job.CanTransition(from, to));
    }

    [Theory]
    [MemberData(nameof(AllVerbCells))]
    public void Verb_table_matches_qemu(JobVerb verb, JobStatus status)
    {
        var expected = Verbs[verb][Array.IndexOf(Order, status)] == 'x';
        Assert.Equal(expected, Job.AllowsVerb(status, verb));
    }

    [Fact]
    public void Names_are_qemu_spellings()
    {
        Assert.Equal("set-speed", JobNames.Of(JobVerb.SetSpeed));
        Assert.Equal("write-blocking", JobNames.Of(MirrorCopyMode.WriteBlocking));
        Assert.Equal("on-success", JobNames.Of(BitmapMode.OnSuccess));
        Assert.Equal("standby", JobNames.Of(JobStatus.Standby));
        Assert.Equal("nospace", JobNames.Of(IoStatus.Nospace));
        foreach (var s in Order)
            Assert.Equal(s, JobNames.ParseStatus(JobNames.Of(s)));
    }
}
