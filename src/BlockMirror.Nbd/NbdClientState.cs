namespace BlockMirror.Nbd;

/// <summary>
/// Where an <see cref="NbdClient"/> is in its life. It only moves forward: Negotiating → Ready →
/// Broken → Closed; <c>Break</c> is the one way into Broken, whatever broke the connection.
/// </summary>
internal enum NbdClientState
{
    /// <summary>The handshake is running; no requests yet.</summary>
    Negotiating,

    /// <summary>Transmission: requests are sent and replies read.</summary>
    Ready,

    /// <summary>The connection failed, was cut, or is being closed: every pending and later request fails.</summary>
    Broken,

    /// <summary>Disposed: the reader has stopped and the socket is closed.</summary>
    Closed,
}
