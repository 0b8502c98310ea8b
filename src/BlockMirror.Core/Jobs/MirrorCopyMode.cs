namespace BlockMirror.Core.Jobs;

/// <summary>
/// Background: writes dirty the working bitmap. WriteBlocking: writes complete on source and target.
/// Auto: background until the remaining bytes stop shrinking while writes go on (the copy cannot
/// catch up), then write-blocking by itself (<see cref="ConvergenceWatch"/>). What writes do at a
/// given moment is only ever background or write-blocking (<see cref="MirrorJob.CopyMode"/>).
/// </summary>
public enum MirrorCopyMode
{
    Background,
    WriteBlocking,
    Auto,
}
