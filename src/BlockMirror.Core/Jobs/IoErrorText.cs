using BlockMirror.Core.Images;

namespace BlockMirror.Core.Jobs;

/// <summary>
/// The sentence a job keeps as its <c>error</c>: QEMU reports <c>strerror(-ret)</c>
/// ("Input/output error"), so an I/O failure carrying an errno becomes that text; anything else
/// keeps its own message.
/// </summary>
internal static class IoErrorText
{
    public static string Of(Exception e)
    {
        if (IoErrorClassifier.IsNoSpace(e))
            return "No space left on device";
        if (e is IOException io)
        {
            var text = io.HResult switch
            {
                1 => "Operation not permitted",
                5 => "Input/output error",
                6 => "No such device or address",
                13 => "Permission denied",
                30 => "Read-only file system",
                32 => "Broken pipe",
                104 => "Connection reset by peer",
                110 => "Connection timed out",
                122 => "Disk quota exceeded",
                _ => null,
            };
            if (text is not null)
                return text;
        }
        return e.Message;
    }
}
