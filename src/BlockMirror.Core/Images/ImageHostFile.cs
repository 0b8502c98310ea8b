using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Images;

/// <summary>The host file an image lives in: a raw image is its file, a qcow2 image sits on one.</summary>
internal static class ImageHostFile
{
    /// <summary>The file whose stat identifies <paramref name="image"/> (replacement checks, checkpoint stamps), or null (remote images).</summary>
    public static RawFileImage? Of(IBlockImage image) => image switch
    {
        RawFileImage raw => raw,
        Qcow2Image qcow2 => qcow2.HostFile,
        _ => null,
    };
}
