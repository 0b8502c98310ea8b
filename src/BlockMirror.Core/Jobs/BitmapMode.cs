namespace BlockMirror.Core.Jobs;

/// <summary>How a mirror treats the caller's bitmap (API.md "bitmapMode").</summary>
public enum BitmapMode
{
    /// <summary>The bitmap itself is the working bitmap.</summary>
    Always,
    /// <summary>A private copy is the working bitmap; the named one keeps recording and is never cleared.</summary>
    Never,
    /// <summary>Like never during the job; on success the named bitmap becomes what the job left dirty.</summary>
    OnSuccess,
}
