namespace BlockMirror.Core.Jobs;

/// <summary>What a mirror copies: everything, the device's own layer (= full for raw), or only new writes.</summary>
public enum MirrorSyncMode
{
    Full,
    Top,
    None,
}
