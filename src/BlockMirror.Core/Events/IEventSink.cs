namespace BlockMirror.Core.Events;

/// <summary>
/// Where the block layer's events go (QMP's event channel). The host persists them with a
/// monotonic id and fans them out to live subscribers. Publish must not block on I/O.
/// </summary>
public interface IEventSink
{
    /// <summary>Publishes an event; <paramref name="data"/> is serialized as the event's JSON body.</summary>
    void Publish(string name, object data);
}
