namespace BlockMirror.Nbd;

/// <summary>
/// The peer broke the NBD protocol (bad magic, impossible lengths, unknown reply types): the
/// connection cannot continue and is dropped (a "hard disconnect" in the spec's words).
/// </summary>
public sealed class NbdProtocolException : IOException
{
    /// <summary>Creates the exception with a description of the violation.</summary>
    public NbdProtocolException(string message)
        : base(message)
    {
    }
}
