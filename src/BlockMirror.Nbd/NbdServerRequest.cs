namespace BlockMirror.Nbd;

/// <summary>One validated transmission request, as the connection's reader starts it (a struct: accepting a request allocates nothing).</summary>
/// <param name="Payload">A pooled buffer holding a WRITE's data (null otherwise); the request's runner returns it.</param>
internal readonly record struct NbdServerRequest(ushort Flags, ushort Type, ulong Cookie, long Offset, uint Length, byte[]? Payload);
