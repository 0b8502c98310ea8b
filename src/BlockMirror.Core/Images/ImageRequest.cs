namespace BlockMirror.Core.Images;

/// <summary>
/// What a node asks of its driver: a file under the image root (<paramref name="Path"/>, relative) or
/// a remote export (<paramref name="Uri"/>), to be created with <paramref name="CreateSize"/> bytes
/// when set, opened read-only or read-write.
/// </summary>
public sealed record ImageRequest(string? Path, string? Uri, long? CreateSize, bool ReadOnly);
