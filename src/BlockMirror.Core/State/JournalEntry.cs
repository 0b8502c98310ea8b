namespace BlockMirror.Core.State;

/// <summary>One journal record: granules [<see cref="FirstGranule"/>, +<see cref="GranuleCount"/>) of a bitmap may be dirty.</summary>
public readonly record struct JournalEntry(long Sequence, string Node, string Bitmap, long FirstGranule, long GranuleCount);
