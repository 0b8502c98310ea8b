namespace BlockMirror.Core.Tests.State;

/// <summary>
/// A fact that makes files immutable (<see cref="BlockMirror.Tests.Shared.Chattr"/>): skipped, saying
/// why, where this process may not.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Core.Tests")]
public sealed class ChattrFactAttribute : FactAttribute
{
    public ChattrFactAttribute()
    {
        if (BlockMirror.Tests.Shared.Chattr.Refusal is { } reason)
            Skip = "needs chattr +i: " + reason;
    }
}
