namespace BlockMirror.Core.Jobs;

/// <summary>QEMU's JobStatus.</summary>
public enum JobStatus
{
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
}
