namespace BlockMirror.Core.Images;

/// <summary>
/// An image that can take a range copied from another image without the bytes passing through
/// the caller (copy offload, QEMU's <c>bdrv_co_copy_range</c>): the kernel copies between two files,
/// and on a file system with reflink (btrfs, XFS) it shares the blocks instead.
/// </summary>
internal interface ICopyRangeTarget
{
    /// <summary>False when a copy from <paramref name="source"/> is sure to be refused (another kind of image), so a caller need not prepare one.</summary>
    bool CanCopyFrom(IBlockImage source);

    /// <summary>
    /// Copies [<paramref name="offset"/>, +<paramref name="length"/>) of <paramref name="source"/>
    /// to the same range of this image. Throws <see cref="CopyRangeRefusedException"/> when this
    /// pair of images cannot (the caller copies by read and write instead; the range may be partly
    /// copied already), an <see cref="IOException"/> with the errno as HResult on an I/O error.
    /// With <paramref name="refuseLeadingZeroes"/>, also refuses (not permanently, nothing copied)
    /// when the source range starts with a block of zeroes (<see cref="Nodes.WriteRequest.RefuseLeadingZeroes"/>).
    /// </summary>
    ValueTask CopyRangeFromAsync(IBlockImage source, long offset, long length, bool refuseLeadingZeroes, CancellationToken cancellationToken = default);
}
