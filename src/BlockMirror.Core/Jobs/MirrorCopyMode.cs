namespace BlockMirror.Core.Jobs;

/// <summary>Background: writes dirty the working bitmap. WriteBlocking: writes complete on source and target.</summary>
public enum MirrorCopyMode
{
    Background,
    WriteBlocking,
}
