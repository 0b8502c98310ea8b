namespace BlockMirror.Nbd;

/// <summary>
/// Where a server connection is in its life. It only moves forward: Handshake → Transmission →
/// Draining → Broken → Closed, any step may be skipped, and <c>Break</c> is the one way into
/// Broken, whatever ended the connection (the client, a protocol error, a failed reply, a close
/// whose grace ran out, or the normal end).
/// </summary>
internal enum NbdConnectionState
{
    /// <summary>Greeting and option haggling.</summary>
    Handshake,

    /// <summary>Requests are read and answered.</summary>
    Transmission,

    /// <summary>Closing: no more requests are read; those accepted still reply until the grace ends.</summary>
    Draining,

    /// <summary>The socket is shut: work in flight is cancelled and nothing more is sent.</summary>
    Broken,

    /// <summary>Disposed.</summary>
    Closed,
}
