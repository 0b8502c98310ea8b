using Microsoft.Extensions.Logging;

namespace BlockMirror.Tests.Shared;

/// <summary>A logger that hands every entry (its event id and formatted text) to <paramref name="sink"/>.</summary>
internal sealed class CapturingLogger<T>(Action<EventId, string> sink) : ILogger<T>
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        sink(eventId, formatter(state, exception));
}
