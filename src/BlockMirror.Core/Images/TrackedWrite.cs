namespace BlockMirror.Core.Images;

/// <summary>
/// One write in flight on a direct image, by the aligned span it touches (QEMU's BdrvTrackedRequest):
/// a read-modify-write is serialising, everything else only waits for serialising ones. Pooled by
/// <see cref="TrackedWrites"/>; <see cref="Done"/> exists only once someone waits for this write.
/// </summary>
internal sealed class TrackedWrite
{
    public long Start;
    public long End;
    public bool Serialising;
    public TaskCompletionSource? Done;

    public bool Overlaps(long start, long end) => Start < end && start < End;
}
