namespace BlockMirror.Core.Jobs;

/// <summary>QEMU's BlockDeviceIoStatus for a job.</summary>
public enum IoStatus
{
    Ok,
    Failed,
    Nospace,
}
