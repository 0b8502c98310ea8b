namespace BlockMirror.Nbd.Protocol;

/// <summary>The 28-byte header of a transmission request, parsed in place (a struct: reading one allocates nothing).</summary>
internal readonly record struct NbdRequestHeader(uint Magic, ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length);
