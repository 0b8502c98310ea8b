namespace BlockMirror.Core.Jobs;

/// <summary>QEMU's BlockdevOnError: what a job does when an I/O request fails.</summary>
public enum BlockdevOnError
{
    Report,
    Ignore,
    Stop,
    Enospc,
}
