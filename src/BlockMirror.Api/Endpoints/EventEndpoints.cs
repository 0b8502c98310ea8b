using System.Net.ServerSentEvents;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using BlockMirror.Api.Events;
using Microsoft.AspNetCore.Http.HttpResults;

namespace BlockMirror.Api.Endpoints;

/// <summary>Routes for /api/v1/events: the event stream as Server-Sent Events.</summary>
public static class EventEndpoints
{
    public static RouteGroupBuilder MapEventEndpoints(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/events").WithTags("Events");
        group.MapGet("/", StreamEvents).WithName(nameof(StreamEvents)).Produces(200, contentType: "text/event-stream");
        return group;
    }

    /// <summary>Stream events (Server-Sent Events): job status changes, ready, completed, cancelled, errors.</summary>
    /// <remarks>
    /// Every event after <c>Last-Event-ID</c> (header, or <c>lastEventId</c> query for clients that cannot
    /// set headers), then live events. Each has its persisted id, its name (QEMU's: JOB_STATUS_CHANGE,
    /// BLOCK_JOB_READY, ...) as the SSE event type and JSON data with a <c>timestamp</c> (UTC).
    /// </remarks>
    /// <param name="lastEventId">Replay the events after this id (as the Last-Event-ID header).</param>
    public static async Task<EmptyHttpResult> StreamEvents(HttpContext context, EventHub hub, IHostApplicationLifetime lifetime, long? lastEventId = null)
    {
        var after = lastEventId ?? 0;
        if (long.TryParse(context.Request.Headers["Last-Event-ID"].ToString(), out var header))
            after = header;
        // The stream also ends when the service stops: the server waits for open requests before it
        // stops the rest, so a stream that only ended with its client held every stop for the whole
        // shutdown timeout (and the clean stop after it). An EventSource reconnects by itself.
        using var ended = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, lifetime.ApplicationStopping);
        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache,no-store";
        response.Headers["X-Accel-Buffering"] = "no";
        try
        {
            // A comment line first, so the client sees the stream open even before the first event.
            await response.WriteAsync(": connected\n\n", ended.Token);
            await response.Body.FlushAsync(ended.Token);
            await SseFormatter.WriteAsync(ToItems(hub, after, ended.Token), response.Body, ended.Token);
        }
        catch (OperationCanceledException) when (ended.IsCancellationRequested)
        {
            // The client went away, or the service is stopping.
        }
        return TypedResults.Empty;
    }

    private static async IAsyncEnumerable<SseItem<string>> ToItems(EventHub hub, long after, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await foreach (var m in hub.SubscribeAsync(after, cancellationToken))
            yield return new SseItem<string>(WithTimestamp(m), m.Name) { EventId = m.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) };
    }

    /// <summary>
    /// The event's data with the time it was published as <c>timestamp</c> (QMP puts one on every
    /// event). Added here, from the stored time, so events persisted before it have one too.
    /// </summary>
    private static string WithTimestamp(EventMessage m)
    {
        if (JsonNode.Parse(m.Data) is not JsonObject data || data.ContainsKey("timestamp"))
            return m.Data;
        data["timestamp"] = DateTime.SpecifyKind(m.Time, DateTimeKind.Utc);
        return data.ToJsonString();
    }
}
