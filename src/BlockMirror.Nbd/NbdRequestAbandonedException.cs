namespace BlockMirror.Nbd;

/// <summary>
/// Why an <see cref="NbdClient"/> broke when a caller cancelled a request already on the wire: the
/// connection was cut on purpose, so its owner may open a new one (<see cref="NbdClient.Abandoned"/>).
/// </summary>
internal sealed class NbdRequestAbandonedException : OperationCanceledException
{
    public NbdRequestAbandonedException()
        : base("a request was abandoned")
    {
    }
}
