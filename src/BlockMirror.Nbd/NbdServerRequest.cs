namespace BlockMirror.Nbd;

/// <summary>One validated transmission request, as the connection's reader starts it (a struct: accepting a request allocates nothing).</summary>
/// <param name="Payload">A pooled buffer holding a WRITE's data from <paramref name="PayloadOffset"/> (null otherwise); the request's runner returns it.</param>
/// <param name="AlignedPayload">The payload buffer is from <see cref="NbdAlignedBuffers"/> (a direct export), not <c>ArrayPool</c>.</param>
internal readonly record struct NbdServerRequest(ushort Flags, ushort Type, ulong Cookie, long Offset, uint Length, byte[]? Payload, int PayloadOffset = 0, bool AlignedPayload = false)
{
    /// <summary>A WRITE's data.</summary>
    public ReadOnlyMemory<byte> Data => Payload.AsMemory(PayloadOffset, (int)Length);
}
