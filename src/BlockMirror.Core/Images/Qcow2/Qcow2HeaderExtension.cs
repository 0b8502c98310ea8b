namespace BlockMirror.Core.Images.Qcow2;

/// <summary>One header extension as stored (type and data, without the padding), kept so a rewrite preserves it.</summary>
internal readonly record struct Qcow2HeaderExtension(uint Type, byte[] Data);
