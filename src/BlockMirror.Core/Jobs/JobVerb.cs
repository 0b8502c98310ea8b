namespace BlockMirror.Core.Jobs;

/// <summary>QEMU's JobVerb.</summary>
public enum JobVerb
{
    Cancel,
    Pause,
    Resume,
    SetSpeed,
    Complete,
    Finalize,
    Dismiss,
    Change,
}
