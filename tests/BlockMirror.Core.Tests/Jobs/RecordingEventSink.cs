using System.Text.Json;
using BlockMirror.Core.Events;

namespace BlockMirror.Core.Tests.Jobs;

/// <summary>Keeps every event and lets a test await one (no sleeping: the publish completes the wait).</summary>
public sealed class RecordingEventSink : IEventSink
{
    private readonly Lock _lock = new();
    private readonly List<RecordedEvent> _events = [];
    private readonly List<(Func<RecordedEvent, bool> Match, TaskCompletionSource<RecordedEvent> Done)> _waiters = [];

    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    public IReadOnlyList<RecordedEvent> Events
    {
        get
        {
            lock (_lock)
                return [.. _events];
        }
    }

    public void Publish(string name, object data)
    {
        var e = new RecordedEvent(name, JsonSerializer.SerializeToElement(data));
        List<TaskCompletionSource<RecordedEvent>> done = [];
        lock (_lock)
        {
            _events.Add(e);
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Match(e))
                {
                    done.Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }
        foreach (var d in done)
            d.TrySetResult(e);
    }

    /// <summary>The first event (already published or future) that matches.</summary>
    public Task<RecordedEvent> WaitAsync(Func<RecordedEvent, bool> match)
    {
        lock (_lock)
        {
            var seen = _events.FirstOrDefault(match);
            if (seen is not null)
                return Task.FromResult(seen);
            var tcs = new TaskCompletionSource<RecordedEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((match, tcs));
            return tcs.Task.WaitAsync(Timeout);
        }
    }

    /// <summary>The next matching event published after <paramref name="afterIndex"/> events.</summary>
    public Task<RecordedEvent> WaitAfterAsync(int afterIndex, Func<RecordedEvent, bool> match)
    {
        lock (_lock)
        {
            var seen = _events.Skip(afterIndex).FirstOrDefault(match);
            if (seen is not null)
                return Task.FromResult(seen);
            var tcs = new TaskCompletionSource<RecordedEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((match, tcs));
            return tcs.Task.WaitAsync(Timeout);
        }
    }

    public int Count
    {
        get
        {
            lock (_lock)
                return _events.Count;
        }
    }

    public Task<RecordedEvent> WaitForAsync(string name, string jobId) =>
        WaitAsync(e => e.Name == name && (e.Str("id") == jobId));

    public Task<RecordedEvent> WaitForStatusAsync(string jobId, string status) =>
        WaitAsync(e => e.Name == "JOB_STATUS_CHANGE" && e.Str("id") == jobId && e.Str("status") == status);

    /// <summary>The statuses a job went through, in order.</summary>
    public IReadOnlyList<string> StatusesOf(string jobId) =>
        [.. Events.Where(e => e.Name == "JOB_STATUS_CHANGE" && e.Str("id") == jobId).Select(e => e.Str("status")!)];

    public IReadOnlyList<RecordedEvent> Named(string name) => [.. Events.Where(e => e.Name == name)];
}
