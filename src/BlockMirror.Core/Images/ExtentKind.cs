namespace BlockMirror.Core.Images;

/// <summary>What a range of an image holds, as block status reports it.</summary>
public enum ExtentKind
{
    /// <summary>Allocated data (may still happen to contain zeroes).</summary>
    Data,
    /// <summary>A hole or a range known to read as zeroes.</summary>
    Zero,
}
