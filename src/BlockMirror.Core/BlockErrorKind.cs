namespace BlockMirror.Core;

/// <summary>How a refusal is classified; the host maps it to an HTTP status.</summary>
public enum BlockErrorKind
{
    /// <summary>Malformed or invalid input (400).</summary>
    Invalid,
    /// <summary>A named resource does not exist (404).</summary>
    NotFound,
    /// <summary>The request conflicts with the current state (409).</summary>
    Conflict,
    /// <summary>An I/O failure of an image (the host reports 500-free as a 409/503-like problem).</summary>
    IoError,
}
