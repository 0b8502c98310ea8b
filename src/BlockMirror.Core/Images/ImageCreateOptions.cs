namespace BlockMirror.Core.Images;

/// <summary>
/// What a format takes beyond the size when it creates an image (qcow2's <c>create</c> members):
/// the cluster size, and a backing image (a path relative to the image root) with its format
/// ("raw" or "qcow2"; probed when not given).
/// </summary>
public sealed record ImageCreateOptions(int? ClusterSize, string? Backing, string? BackingFormat)
{
    public bool IsEmpty => ClusterSize is null && Backing is null && BackingFormat is null;
}
