using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>Maps block-layer failures to the errno values the NBD protocol allows on the wire.</summary>
internal static class NbdErrors
{
    private const int EDQUOT = 122;
    private const int EFBIG = 27;

    public static uint ToErrno(Exception e) => e switch
    {
        BlockException { Code: "node-read-only" } => NbdConstants.EPERM,
        BlockException { Code: "out-of-range" } => NbdConstants.EINVAL,
        BlockException { Code: "service-stopping" } => NbdConstants.ESHUTDOWN,
        BlockException { Kind: BlockErrorKind.Invalid } => NbdConstants.EINVAL,
        NbdException n => Allowed(n.Errno),
        OperationCanceledException => NbdConstants.ESHUTDOWN,
        // The spec asks servers to report quota and file-size limits as ENOSPC too.
        IOException io when IoErrorClassifier.IsNoSpace(io) || io.HResult is EDQUOT or EFBIG => NbdConstants.ENOSPC,
        UnauthorizedAccessException => NbdConstants.EPERM,
        _ => NbdConstants.EIO,
    };

    /// <summary>Passes on a remote server's errno when it is one the protocol defines; EINVAL otherwise (as QEMU squashes).</summary>
    private static uint Allowed(uint errno) => errno switch
    {
        NbdConstants.EPERM or NbdConstants.EIO or NbdConstants.ENOMEM or NbdConstants.EINVAL or NbdConstants.ENOSPC
            or NbdConstants.EOVERFLOW or NbdConstants.ENOTSUP or NbdConstants.ESHUTDOWN => errno,
        _ => NbdConstants.EINVAL,
    };
}
