using System.Text.Json;
using BlockMirror.Api.Events;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Structured log lines for job lifecycles, with the job id as a field. It follows the event hub
/// rather than the endpoints because jobs also start from transactions and end on their own: the
/// events are the one place every start, status change and end passes through.
/// </summary>
public sealed partial class JobEventLogger(EventHub hub, ILogger<JobEventLogger> logger) : IStartupParticipant
{
    private CancellationTokenSource? _stop;
    private Task? _loop;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _stop = new CancellationTokenSource();
        // Only events from now on: a restart must not log the persisted history again.
        var after = hub.LastId;
        var token = _stop.Token;
        _loop = Task.Run(() => FollowAsync(after, token), CancellationToken.None);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // Taken once: a second stop (or a stop without a start) has nothing to do.
        var stop = Interlocked.Exchange(ref _stop, null);
        if (stop is null || _loop is null)
            return;
        await stop.CancelAsync();
        try
        {
            await _loop;
        }
        catch (OperationCanceledException)
        {
        }
        stop.Dispose();
    }

    private async Task FollowAsync(long after, CancellationToken cancellationToken)
    {
        await foreach (var message in hub.SubscribeAsync(after, cancellationToken))
        {
            try
            {
                Write(message);
            }
            catch (JsonException)
            {
                // An event body this logger does not understand is not worth stopping the others for.
            }
        }
    }

    private void Write(EventMessage message)
    {
        using var doc = JsonDocument.Parse(message.Data);
        var data = doc.RootElement;
        var id = Text(data, "id") ?? "?";
        switch (message.Name)
        {
            case "JOB_STATUS_CHANGE":
                LogStatus(logger, id, Text(data, "status") ?? "?");
                break;
            case "BLOCK_JOB_READY":
                LogReady(logger, id, Number(data, "len"));
                break;
            case "BLOCK_JOB_COMPLETED" when Text(data, "error") is { } error:
                LogFailed(logger, id, error);
                break;
            case "BLOCK_JOB_COMPLETED":
                LogCompleted(logger, id, Number(data, "len"));
                break;
            case "BLOCK_JOB_CANCELLED":
                LogCancelled(logger, id, Number(data, "offset"), Number(data, "len"));
                break;
            case "BLOCK_JOB_ERROR":
                LogIoError(logger, id, Text(data, "operation") ?? "?", Text(data, "action") ?? "?");
                break;
            case "BLOCK_JOB_COPY_MODE_SWITCHED":
                LogCopyModeSwitched(logger, id, Text(data, "reason") ?? "?", Number(data, "copyRate"), Number(data, "dirtyRate"), Number(data, "remaining"));
                break;
        }
    }

    private static string? Text(JsonElement data, string name) =>
        data.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static long Number(JsonElement data, string name) =>
        data.TryGetProperty(name, out var v) && v.TryGetInt64(out var n) ? n : 0;

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "Job {JobId} is now {Status}")]
    private static partial void LogStatus(ILogger logger, string jobId, string status);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Information, Message = "Job {JobId} is ready: {Length} bytes in sync")]
    private static partial void LogReady(ILogger logger, string jobId, long length);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Information, Message = "Job {JobId} completed: {Length} bytes")]
    private static partial void LogCompleted(ILogger logger, string jobId, long length);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "Job {JobId} failed: {Error}")]
    private static partial void LogFailed(ILogger logger, string jobId, string error);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Information, Message = "Job {JobId} cancelled at {Offset} of {Length} bytes")]
    private static partial void LogCancelled(ILogger logger, string jobId, long offset, long length);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning, Message = "Job {JobId} hit an I/O error on {Operation}; action {Action}")]
    private static partial void LogIoError(ILogger logger, string jobId, string operation, string action);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Information,
        Message = "Job {JobId} switched to write-blocking ({Reason}): copy rate {CopyRate} B/s, dirty rate {DirtyRate} B/s, {Remaining} bytes remaining")]
    private static partial void LogCopyModeSwitched(ILogger logger, string jobId, string reason, long copyRate, long dirtyRate, long remaining);
}
