namespace BlockMirror.Nbd;

/// <summary>
/// TLS credentials that cannot be used: a PEM file missing or unreadable, a key that does not
/// belong to its certificate, a certificate out of its validity period, an allowed-client name
/// that is not a distinguished name. The message names the file or setting and the reason, in one
/// line (the service prints it when it refuses to start).
/// </summary>
public sealed class NbdTlsConfigurationException : Exception
{
    /// <summary>Creates the exception with its one-line reason.</summary>
    public NbdTlsConfigurationException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
