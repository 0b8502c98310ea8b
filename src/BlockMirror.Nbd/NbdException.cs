using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// An NBD server answered a request with an error. <see cref="Exception.HResult"/> carries the
/// errno (the protocol's values are Linux's), so <c>IoErrorClassifier.IsNoSpace</c> recognises
/// ENOSPC from a remote target exactly as from a local file.
/// </summary>
public sealed class NbdException : IOException
{
    /// <summary>Creates the exception for <paramref name="errno"/> with the server's message, if any.</summary>
    public NbdException(uint errno, string? serverMessage, string operation)
        : base(Format(errno, serverMessage, operation))
    {
        Errno = errno;
        ServerMessage = serverMessage;
        HResult = (int)errno;
    }

    /// <summary>The NBD error value (EPERM 1, EIO 5, ENOMEM 12, EINVAL 22, ENOSPC 28, EOVERFLOW 75, ESHUTDOWN 108, …).</summary>
    public uint Errno { get; }

    /// <summary>The human-readable text of a structured error chunk, when the server sent one.</summary>
    public string? ServerMessage { get; }

    private static string Format(uint errno, string? message, string operation) =>
        string.IsNullOrEmpty(message)
            ? $"NBD {operation} failed: {NbdWire.ErrnoName(errno)}"
            : $"NBD {operation} failed: {NbdWire.ErrnoName(errno)}: {message}";
}
