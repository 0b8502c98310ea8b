using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Nbd.Protocol;

/// <summary>A metadata context a connection selected: <c>base:allocation</c> (no bitmap) or a dirty bitmap's.</summary>
internal sealed record NbdMetaContext(uint Id, string Name, DirtyBitmap? Bitmap);
