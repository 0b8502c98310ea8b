namespace BlockMirror.Api.Tests.Crash;

/// <summary>Where a life of the service under test ends with kill -9.</summary>
internal enum KillPoint
{
    /// <summary>Several HTTP and NBD writers, killed while some of their writes are in flight.</summary>
    DuringWrites,

    /// <summary>One writer, killed the instant a write was acknowledged.</summary>
    RightAfterAnAcknowledgedWrite,

    /// <summary>Writers running through a mirror (background or write-blocking), killed before or after it is ready.</summary>
    DuringAMirror,

    /// <summary>A mirror that concluded successfully, then writers, then the kill.</summary>
    AfterACompletedMirror,

    /// <summary>Writers running while a transaction clears a bitmap and adds/removes another.</summary>
    DuringATransaction,

    /// <summary>
    /// Writers running while a second instance starts on the same data folder: killed after it was
    /// refused, or while it is still starting (then it may find the folder free and start: a life of its own).
    /// </summary>
    AroundASecondInstanceStart,
}
