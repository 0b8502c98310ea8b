namespace BlockMirror.Core.Events;

/// <summary>Drops every event (unit tests, tools).</summary>
public sealed class NullEventSink : IEventSink
{
    public static readonly NullEventSink Instance = new();

    public void Publish(string name, object data)
    {
    }
}
