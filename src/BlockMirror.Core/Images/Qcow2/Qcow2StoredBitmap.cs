namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// A bitmap the image's bitmaps extension held when it was opened, with its flags as found (before a
/// read-write open marked it in use): <paramref name="InUse"/> means the last writer did not store it
/// (a crashed QEMU, or a writer still running), <paramref name="Auto"/> that it records writes (enabled).
/// </summary>
public sealed record Qcow2StoredBitmap(string Name, long Granularity, bool InUse, bool Auto);
