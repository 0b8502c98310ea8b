namespace BlockMirror.Core.State;

/// <summary>
/// The bitmap journal cannot be written: the write that needed it was refused before it reached the
/// image, so nothing of it took effect. The host answers 503 <c>storage-unavailable</c>. Still an
/// <see cref="IOException"/>, with the cause's errno as <see cref="Exception.HResult"/>, so a full
/// disk under the journal reads as ENOSPC to whoever classifies it (an NBD client sees ENOSPC, as
/// QEMU's guests expect for a full host file system, and may retry once space returns).
/// </summary>
public sealed class BitmapJournalException : IOException
{
    public BitmapJournalException(string message, Exception? cause = null)
        : base(message, cause)
    {
        if (cause is IOException io)
            HResult = io.HResult;
    }
}
