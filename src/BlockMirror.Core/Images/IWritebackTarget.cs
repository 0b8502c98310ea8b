namespace BlockMirror.Core.Images;

/// <summary>
/// An image whose written data waits in the kernel's page cache until a flush, and which can be
/// told to start writing it back without waiting for it (<c>sync_file_range(SYNC_FILE_RANGE_WRITE)</c>).
/// A mirror uses it behind its copy, so the flush before READY finds little left to write.
/// </summary>
internal interface IWritebackTarget
{
    /// <summary>
    /// Starts writeback of the pages of [<paramref name="offset"/>, +<paramref name="length"/>) dirty
    /// now and not yet under writeback, on the calling thread (it may block while the device's queue is full, never for the write itself).
    /// False when the image refuses it for good (no page cache, a file that cannot): a caller stops
    /// asking. A hint is no flush: errors of the writeback it starts are reported by the next flush.
    /// </summary>
    bool StartWriteback(long offset, long length);
}
