namespace BlockMirror.Core.State;

/// <summary>A journal segment: its file, the sequence it starts at, and the last one it holds once sealed.</summary>
internal readonly record struct SegmentFile(string Path, long BaseSequence, long LastSequence);
