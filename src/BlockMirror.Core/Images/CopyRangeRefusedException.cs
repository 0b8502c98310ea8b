namespace BlockMirror.Core.Images;

/// <summary>
/// A copy offload that did not happen, not an I/O error: the caller copies the range by read and
/// write. <see cref="Permanent"/> says whether asking again for the same pair of images is pointless
/// (another file system, a kind of image without offload), so the caller stops asking.
/// </summary>
internal sealed class CopyRangeRefusedException : Exception
{
    public CopyRangeRefusedException(string message, bool permanent)
        : base(message)
    {
        Permanent = permanent;
    }

    public bool Permanent { get; }
}
