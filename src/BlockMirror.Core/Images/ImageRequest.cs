namespace BlockMirror.Core.Images;

/// <summary>
/// What a node asks of its driver: a file under the image root (<paramref name="Path"/>, relative) or
/// a remote export (<paramref name="Uri"/>), to be created with <paramref name="CreateSize"/> bytes
/// when set, opened read-only or read-write; <paramref name="CreateOptions"/> are a format's further
/// creation parameters (qcow2's cluster size and backing image); <paramref name="CacheDirect"/> opens
/// with O_DIRECT (QEMU's cache.direct: raw files and host block devices only).
/// </summary>
public sealed record ImageRequest(string? Path, string? Uri, long? CreateSize, bool ReadOnly, ImageCreateOptions? CreateOptions = null,
    bool CacheDirect = false);
