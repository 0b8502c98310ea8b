namespace BlockMirror.Api.Events;

/// <summary>A published event as subscribers see it: id, name and JSON body.</summary>
public sealed record EventMessage(long Id, string Name, string Data, DateTime Time);
