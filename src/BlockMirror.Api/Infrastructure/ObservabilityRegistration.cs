using OpenTelemetry.Metrics;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Metrics (OpenTelemetry → Prometheus text at /metrics) and job lifecycle logs.</summary>
public static class ObservabilityRegistration
{
    public const string MetricsPath = "/metrics";

    public static IServiceCollection AddBlockMirrorObservability(this IServiceCollection services)
    {
        services.AddSingleton<BlockMirrorMetrics>();
        services.AddOpenTelemetry().WithMetrics(metrics =>
        {
            metrics.AddMeter(BlockMirrorMetrics.MeterName)
                .AddAspNetCoreInstrumentation()
                // Observable values are read at scrape time: no response cache, so a scrape right
                // after a write or a job step shows it (a scrape is cheap at this cardinality).
                .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0);
            // The OpenAPI generators run Program: creating the instruments would open the block
            // layer (and its image root) there, so the service's own meter exists only in the service.
            if (!HostEnvironmentExtensions.IsDocumentGeneration())
                metrics.AddInstrumentation(sp => sp.GetRequiredService<BlockMirrorMetrics>());
        });
        if (!HostEnvironmentExtensions.IsDocumentGeneration())
            services.AddSingleton<IStartupParticipant, JobEventLogger>();
        return services;
    }

    public static IEndpointConventionBuilder MapBlockMirrorMetrics(this IEndpointRouteBuilder app) =>
        app.MapPrometheusScrapingEndpoint(MetricsPath);
}
