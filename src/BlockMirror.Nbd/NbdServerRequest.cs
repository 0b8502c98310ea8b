namespace BlockMirror.Nbd;

/// <summary>One validated transmission request handed from a connection's reader to a worker.</summary>
/// <param name="Payload">A pooled buffer holding a WRITE's data (null otherwise); the worker returns it.</param>
internal sealed record NbdServerRequest(ushort Flags, ushort Type, ulong Cookie, long Offset, uint Length, byte[]? Payload);
