namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The problems a qcow2 image can raise, each with a stable code (the API maps the kind to a status):
/// <c>image-not-qcow2</c> (not this format at all), <c>image-feature-unsupported</c> (a feature the
/// driver cannot honour, named), <c>image-corrupt</c> (metadata that cannot be right; QEMU's wording
/// where QEMU has one), <c>image-too-large</c> (beyond QEMU's implementation limits).
/// </summary>
public static class Qcow2Errors
{
    public const string NotQcow2Code = "image-not-qcow2";
    public const string FeatureUnsupportedCode = "image-feature-unsupported";
    public const string CorruptCode = "image-corrupt";
    public const string TooLargeCode = "image-too-large";

    internal static BlockException NotQcow2(string path) =>
        BlockErrors.Invalid(NotQcow2Code, $"Could not open '{path}': Image is not in qcow2 format");

    internal static BlockException Unsupported(string path, string what) =>
        BlockErrors.Invalid(FeatureUnsupportedCode, $"Could not open '{path}': {what}");

    /// <summary>Found while opening: the image cannot be used as it is (409, nothing was changed).</summary>
    internal static BlockException CorruptAtOpen(string path, string what) =>
        BlockErrors.Conflict(CorruptCode, $"Could not open '{path}': {what}");

    /// <summary>Found during I/O: the request fails as an I/O error of the image.</summary>
    internal static BlockException Corrupt(string path, string what) =>
        new(BlockErrorKind.IoError, CorruptCode, $"qcow2 image '{path}' is corrupt: {what}");

    internal static BlockException TooLarge(string path, string what) =>
        BlockErrors.Invalid(TooLargeCode, $"'{path}': {what}");
}
