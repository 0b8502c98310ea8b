namespace BlockMirror.Core.State;

/// <summary>
/// One journal record: granules [<see cref="FirstGranule"/>, +<see cref="GranuleCount"/>) of a bitmap
/// may be dirty (<see cref="JournalEntryKind.Mark"/>), or that range is an extent made hot or retired
/// by the activity log (<see cref="JournalEntryKind"/>).
/// </summary>
public readonly record struct JournalEntry(long Sequence, string Node, string Bitmap, long FirstGranule, long GranuleCount, JournalEntryKind Kind = JournalEntryKind.Mark);
